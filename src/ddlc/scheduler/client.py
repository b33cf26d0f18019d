"""A thin client over Slurm's commands (sbatch, squeue, scontrol, scancel, sinfo): run them, read their
machine-readable output (`--parsable`, `-h -o` with '|' between fields), and turn their failures into one line.

    ddlc submit / ddlc jobs / ddlc health --slurm-drain  ->  Slurm(...)  ->  subprocess  ->  slurmctld

Nothing here parses the human-readable tables. SLURM_CONF in the environment picks the cluster (as for sbatch).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ddlc.errors import UserError

# slurmd runs HealthCheckProgram with almost no environment: without PATH, look where the packages put them.
_FALLBACK_DIRS = ("/usr/bin", "/usr/local/bin", "/opt/slurm/bin")
SEP = "|"
# What the commands say when slurmctld (or munge, which authenticates every request) is not there.
_UNREACHABLE = ("unable to contact slurm controller", "connection refused", "could not establish a configuration",
                "munge", "zero bytes were transmitted", "socket timed out", "no such file or directory: slurm.conf",
                "can't open slurm.conf", "unable to process configuration file")


class SlurmUnavailable(UserError):
    """No Slurm to talk to: the commands are missing, or slurmctld does not answer."""


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: int
    available: bool


@dataclass(frozen=True)
class JobRow:
    job_id: str
    name: str
    user: str
    state: str  # RUNNING, PENDING, COMPLETED, CANCELLED, ...
    nodes: int
    elapsed: str  # Slurm's [D-]HH:MM:SS
    nodelist: str  # the allocated nodes, or the pending reason in parentheses
    partition: str
    comment: str


@dataclass(frozen=True)
class NodeRow:
    name: str
    state: str  # lower case, e.g. idle, allocated, drained, draining, down
    reason: str


def elapsed_seconds(text: str) -> int:
    """Slurm's elapsed time (`M:SS`, `H:MM:SS`, `D-HH:MM:SS`) in seconds; 0 for anything else."""
    days, _, clock = text.strip().rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        total = 0
        for part in parts:
            total = total * 60 + part
        return total + (int(days) * 86400 if days else 0)
    except ValueError:
        return 0


class Slurm:
    def __init__(self, env: Optional[dict] = None, timeout_s: float = 30.0):
        self.env = dict(os.environ if env is None else env)
        self.timeout_s = timeout_s

    def _binary(self, name: str) -> str:
        found = shutil.which(name, path=self.env["PATH"]) if "PATH" in self.env else next(
            (str(Path(d) / name) for d in _FALLBACK_DIRS if (Path(d) / name).is_file()), None)
        if found is None:
            raise SlurmUnavailable(f"no Slurm here: `{name}` not found (install slurm-client, or run this on the "
                                   "cluster's head node)")
        return found

    def run(self, name: str, args: Sequence[str], stdin: Optional[str] = None) -> str:
        argv = [self._binary(name), *args]
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=self.env,
                                  timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"no Slurm reachable: `{name}` got no answer from slurmctld in "
                                   f"{self.timeout_s:g} s") from None
        if proc.returncode != 0:
            lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            message = (lines[-1] if lines else f"exit code {proc.returncode}")[:300]  # the last line says why
            if any(marker in message.lower() for marker in _UNREACHABLE):
                raise SlurmUnavailable(f"no Slurm reachable: `{name}`: {message}")
            raise UserError(f"`{name} {' '.join(args)}` failed: {message}")
        return proc.stdout

    # -- reading ----------------------------------------------------------------------------------------------
    def partitions(self) -> dict[str, Partition]:
        """Every partition with its node count (sinfo prints one line per partition and node state: summed)."""
        found: dict[str, Partition] = {}
        for line in self.run("sinfo", ["-h", "-o", f"%R{SEP}%D{SEP}%a"]).splitlines():
            parts = line.split(SEP)
            if len(parts) != 3 or not parts[1].isdigit():
                continue
            name, count, avail = parts[0], int(parts[1]), parts[2].strip().lower() == "up"
            old = found.get(name)
            found[name] = Partition(name, count + (old.nodes if old else 0), avail or (old.available if old else False))
        return found

    def default_partition(self) -> Optional[str]:
        """The partition sinfo marks with '*' (`%P`)."""
        for line in self.run("sinfo", ["-h", "-o", "%P"]).splitlines():
            if line.strip().endswith("*"):
                return line.strip().rstrip("*")
        return None

    def jobs(self, user: Optional[str] = None, job_ids: Sequence[str] = ()) -> list[JobRow]:
        # --states=all: squeue shows only pending and running jobs by default; ended ones stay listed for
        # MinJobAge (5 minutes by default) with their final state, which is what `ddlc jobs` promises.
        args = ["-h", "--states=all", "-o", SEP.join(["%i", "%j", "%u", "%T", "%D", "%M", "%R", "%P", "%k"])]
        if user:
            args += ["-u", user]
        if job_ids:
            args += ["-j", ",".join(job_ids)]
        try:
            text = self.run("squeue", args)
        except SlurmUnavailable:
            raise
        except UserError as error:
            if job_ids and "invalid job id" in str(error).lower():
                return []  # squeue's answer for an id it does not know (any more)
            raise
        rows = []
        for line in text.splitlines():
            parts = line.split(SEP, 8)
            if len(parts) != 9:
                continue
            job_id, name, owner, state, nodes, elapsed, nodelist, partition, comment = parts
            rows.append(JobRow(job_id, name, owner, state, int(nodes) if nodes.isdigit() else 0, elapsed,
                               nodelist, partition, "" if comment == "(null)" else comment))
        return rows

    def job_fields(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o ID` as KEY -> value (values without spaces; Command/WorkDir may hold none)."""
        text = self.run("scontrol", ["show", "job", "-o", job_id])
        fields = {}
        for word in text.split():
            key, sep, value = word.partition("=")
            if sep:
                fields[key] = value
        return fields

    def node(self, name: str) -> Optional[NodeRow]:
        for line in self.run("sinfo", ["-h", "-N", "-n", name, "-o", f"%N{SEP}%T{SEP}%E"]).splitlines():
            node, state, reason = (line.split(SEP, 2) + ["", ""])[:3]
            if node == name:
                return NodeRow(node, state.lower(), "" if reason == "none" else reason)
        return None

    # -- acting -----------------------------------------------------------------------------------------------
    def submit(self, script_path: str) -> str:
        """sbatch the script; returns the job id."""
        out = self.run("sbatch", ["--parsable", script_path]).strip()
        job = out.split(";")[0]
        if not job.isdigit():
            raise UserError(f"sbatch answered {out!r}, not a job id")
        return job

    def cancel(self, job_id: str) -> None:
        self.run("scancel", [job_id])

    def update_node(self, name: str, state: str, reason: Optional[str] = None) -> None:
        args = ["update", f"NodeName={name}", f"State={state}"]
        if reason is not None:
            args.append(f"Reason={reason}")
        self.run("scontrol", args)
