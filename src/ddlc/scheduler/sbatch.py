"""The batch script `ddlc submit` hands to sbatch. Pure text: no Slurm here.

    JobRequest (nodes, GPUs, time, partition, script + args, run name)  --render_script-->  #!/bin/bash
                                                                                            #SBATCH ...
                                                                                            srun ... python -m ddlc.scheduler.step ...

On the allocation, `srun` starts one task per node; each runs ddlc.scheduler.step, which execs ddlc's torchrun
wrapper with a c10d rendezvous on the allocation's first node (so nobody writes per-node commands, and nobody
needs to know about TORCH_DISABLE_SHARE_RDZV_TCP_STORE). Choices, and why:
- `--requeue` and `--open-mode=append`: a job requeued after a node failure or `scontrol requeue` runs the same
  script again; the run name is fixed in the script (`monitoring.run_name=...`), so it resumes from the run's
  newest checkpoint, and its output goes on at the end of the same file.
- output in `<run dir>/<run name>/slurm-<job id>.out`, next to the run's metrics and checkpoints.
- `--exclusive`: a job takes whole nodes. Its workers use every core (data loading, gloo) and the node's network;
  without it Slurm gives a task one core, and where task/cgroup fences CPUs, 8 GPU workers would share that one.
  GPUs are Slurm GRES (`--gpus-per-node`, CUDA_VISIBLE_DEVICES); on CPU nodes one gloo worker per node.
- `--kill-on-bad-exit`: one node's agent failing ends the job step at once instead of leaving the others waiting
  in the rendezvous until its timeout.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Optional

from ddlc.errors import UserError

# Slurm's --time forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS (and UNLIMITED/INFINITE).
_TIME = re.compile(r"^(?:(\d+)-(\d{1,2})(?::(\d{1,2})(?::(\d{1,2}))?)?|(\d+)(?::(\d{1,2})(?::(\d{1,2}))?)?)$")


def parse_time(value: str) -> int:
    """Slurm's time limit in seconds (0: no limit); UserError for anything sbatch would not read the same way."""
    text = value.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return 0
    match = _TIME.match(text)
    if not match:
        raise UserError(f"--time {value!r}: expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS "
                        "(e.g. 90, 1:30:00, 2-00:00:00)")
    days, d_hours, d_minutes, d_seconds, first, second, third = match.groups()
    if days is not None:
        parts = [int(days), int(d_hours), int(d_minutes or 0), int(d_seconds or 0)]
        if parts[1] > 23 or parts[2] > 59 or parts[3] > 59:
            raise UserError(f"--time {value!r}: hours must be 0-23, minutes and seconds 0-59")
        seconds = ((parts[0] * 24 + parts[1]) * 60 + parts[2]) * 60 + parts[3]
    elif third is not None:  # HH:MM:SS
        if int(second) > 59 or int(third) > 59:
            raise UserError(f"--time {value!r}: minutes and seconds must be 0-59")
        seconds = (int(first) * 60 + int(second)) * 60 + int(third)
    elif second is not None:  # MM:SS
        if int(second) > 59:
            raise UserError(f"--time {value!r}: seconds must be 0-59")
        seconds = int(first) * 60 + int(second)
    else:  # minutes
        seconds = int(first) * 60
    if seconds <= 0:
        raise UserError(f"--time {value!r}: must be more than zero")
    if seconds // 60 >= 2**32 - 2:  # Slurm keeps limits in minutes as a 32-bit number (and beyond: INFINITE)
        raise UserError(f"--time {value!r}: longer than Slurm can hold; use UNLIMITED")
    return seconds


# Partition names as slurm.conf allows them (ddlc.scheduler.slurm_conf); DEFAULT is Slurm's defaults line.
_PARTITION = re.compile(r"^(?!DEFAULT$)[A-Za-z][A-Za-z0-9_.-]{0,62}$")
# What ddlc's own script relies on: changed through --sbatch, a requeue would stop resuming (--no-requeue), the
# output and bookkeeping would go elsewhere (--output, --comment, --chdir), or the allocation would no longer be
# the one torchrun is told about (--nodes, --ntasks-per-node, ...). These have their own flags or are fixed.
OWNED_SBATCH_OPTIONS = frozenset({
    "--requeue", "--no-requeue", "--open-mode", "--output", "--error", "--comment", "--chdir", "--job-name",
    "--nodes", "--ntasks", "--ntasks-per-node", "--exclusive", "--gpus-per-node", "--gpus", "--time",
    "--partition", "--wrap", "--array", "--uid", "--gid", "--export",
})


def check_extra_sbatch(option: str) -> None:
    """One long sbatch option for an #SBATCH line, and not one ddlc's script sets itself."""
    if not option.startswith("--") or option == "--" or any(c.isspace() for c in option) or "#" in option:
        raise UserError(f"--sbatch {option!r}: expected one long sbatch option, e.g. --account=ml")
    name = option.split("=", 1)[0]
    if name in OWNED_SBATCH_OPTIONS:
        raise UserError(f"--sbatch {option!r}: {name} is set by ddlc submit itself (see docs/scheduler.md); use "
                        "its own flag (--nodes, --time, --partition, --gpus-per-node) where there is one")


@dataclass(frozen=True)
class JobRequest:
    nodes: int
    script: str  # path as the nodes see it (the submit directory is shared)
    script_args: tuple[str, ...]
    run_name: str
    output_dir: str  # absolute: <run dir>/<run name>
    workdir: str
    gpus_per_node: int = 0
    time: Optional[str] = None
    partition: Optional[str] = None
    python: str = sys.executable
    rdzv_port_base: int = 20000
    extra_sbatch: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise UserError(f"--nodes {self.nodes}: must be at least 1")
        if self.gpus_per_node < 0:
            raise UserError(f"--gpus-per-node {self.gpus_per_node}: must be 0 or more")
        if self.time is not None:
            if self.time != self.time.strip():  # written as given: sbatch would refuse " 5" after ddlc said yes
                raise UserError(f"--time {self.time!r}: no spaces around the time")
            parse_time(self.time)
        if self.partition is not None and not _PARTITION.fullmatch(self.partition):
            raise UserError(f"--partition {self.partition!r}: a partition name is letters, digits, '-', '_' or '.'")
        for option in self.extra_sbatch:
            check_extra_sbatch(option)


    @property
    def nproc_per_node(self) -> int:
        return self.gpus_per_node or 1  # CPU-only nodes: one gloo worker per node


def job_name(run_name: str) -> str:
    return run_name[:64]


def _sbatch_value(label: str, value: str) -> str:
    """A value on an `#SBATCH` line: sbatch splits those lines at whitespace, so a path with a space (or a
    newline, or a quote) would silently become another option."""
    if any(c.isspace() or c in "\"'\\" for c in value):
        raise UserError(f"{label} {value!r}: Slurm's #SBATCH lines cannot hold whitespace or quotes; use a path "
                        "without them")
    return value


def render_script(request: JobRequest) -> str:
    r = request
    for label, value in (("working directory", r.workdir), ("run directory", r.output_dir)):
        _sbatch_value(label, value)
    lines = ["#!/bin/bash",
             "# Generated by `ddlc submit` (ddlc.scheduler.sbatch). Requeued jobs rerun this script and resume from",
             "# the run's newest checkpoint (same run name).",
             f"#SBATCH --job-name={job_name(r.run_name)}",
             f"#SBATCH --nodes={r.nodes}",
             "#SBATCH --ntasks-per-node=1"]
    if r.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={r.gpus_per_node}")
    lines.append("#SBATCH --exclusive")
    if r.time:
        lines.append(f"#SBATCH --time={r.time}")
    if r.partition:
        lines.append(f"#SBATCH --partition={r.partition}")
    lines += ["#SBATCH --requeue",
              "#SBATCH --open-mode=append",
              f"#SBATCH --chdir={r.workdir}",
              f"#SBATCH --output={r.output_dir}/slurm-%j.out",
              f"#SBATCH --comment=ddlc:{r.output_dir}",
              *(f"#SBATCH {option}" for option in r.extra_sbatch),
              "",
              'echo "ddlc: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST at $(date -u +%FT%TZ)"',
              # srun passes scancel's/the time limit's SIGTERM on to every task; `exec` keeps the step's exit
              # code (75 after a preemption checkpoint) as the job's.
              "exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 " + shlex.join(
                  [r.python, "-m", "ddlc.scheduler.step", f"--nproc-per-node={r.nproc_per_node}",
                   f"--port-base={r.rdzv_port_base}", "--", r.script, *r.script_args])]
    return "\n".join(lines) + "\n"
