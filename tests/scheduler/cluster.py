"""A real Slurm cluster on the test hosts (tests/launch/hosts.py), configured by ddlc's own generated slurm.conf.

    host a (10.213.0.1)  slurmctld, hostname ddlc-host-1   <- sbatch/squeue/scontrol run here (`in_head`)
    host b (10.213.0.2)  slurmd,    hostname ddlc-host-2      each daemon in its network namespace and its own UTS
    host c (10.213.0.3)  slurmd,    hostname ddlc-host-3      namespace, so Slurm sees three machines
    one munged (root namespace), its socket shared through the file system; everything else in a temp dir

slurm.conf is `render_slurm_conf(ClusterSpec(...))`: that slurmctld and both slurmd start with it and run jobs
is the proof the generated file works. Its HealthCheckProgram is a wrapper script that execs
`ddlc health --slurm-drain` with this checkout's code, as the cluster's /usr/local/sbin/ddlc-slurm-health does.
Every daemon is stopped and the directory removed in `close()`, which runs even when a test fails.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from ddlc.scheduler.slurm_conf import ClusterSpec, SlurmNode, render_cgroup_conf, render_gres_conf, render_slurm_conf
from tests.launch.hosts import Hosts
from tests.support import PYTHON, REPO

CONTROLLER = "ddlc-host-1"  # names the hosts' /etc/hosts already map to 10.213.0.1-3 in every namespace
NODES = ("ddlc-host-2", "ddlc-host-3")
PARTITION = "debug"
HEALTH_INTERVAL_S = 10  # slurmd runs the health check this often (`ddlc health` takes ~0.5 s)


def slurm_unavailable() -> Optional[str]:
    for tool in ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel", "munged",
                 "unshare"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} not installed (make sysdeps: slurmctld slurmd slurm-client munge)"
    return None


class SlurmCluster:
    def __init__(self, hosts: Hosts, health_interval_s: int = HEALTH_INTERVAL_S):
        self.hosts = hosts
        self.dir = Path(tempfile.mkdtemp(prefix="ddlc-slurm-"))
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket"
        self.procs: list[subprocess.Popen] = []
        self.nodes = NODES
        try:
            self._munge()
            self._configure(health_interval_s)
            self._start()
        except BaseException:
            self.close()
            raise

    # -- setup ------------------------------------------------------------------------------------------------
    def _munge(self) -> None:
        (self.dir / "munge").mkdir(mode=0o700)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.procs.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--pid-file={self.dir / 'munge' / 'munged.pid'}", f"--log-file={self.dir / 'munge' / 'munged.log'}",
             f"--seed-file={self.dir / 'munge' / 'munged.seed'}"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "munged.err", "a")))
        self._wait(lambda: self.munge_socket.exists(), "munged", self.dir / "munged.err")

    def _configure(self, health_interval_s: int) -> None:
        for sub in ("state", "spool", "log", "run", *(f"spool/{name}" for name in NODES)):
            (self.dir / sub).mkdir()
        health = self.dir / "ddlc-slurm-health"
        # slurmd runs the program with SLURMD_NODENAME as its only variable (no PATH): like the cluster's wrapper,
        # this one names the interpreter by its path; SLURM_CONF and PYTHONPATH are the test cluster's own.
        health.write_text("#!/bin/sh\n"
                          f"export SLURM_CONF={shlex.quote(str(self.conf))} "
                          f"PYTHONPATH={shlex.quote(str(REPO / 'src'))}\n"
                          f"exec {shlex.quote(PYTHON)} -m ddlc.cli.main health --slurm-drain "
                          f">>{shlex.quote(str(self.dir / 'log' / 'health.log'))} 2>&1\n")
        health.chmod(0o755)
        cpus = os.cpu_count() or 1
        self.spec = ClusterSpec(
            cluster_name="ddlctest", controller=CONTROLLER, controller_address=self.hosts.addresses[0],
            nodes=tuple(SlurmNode(name, addr, cpus=cpus) for name, addr in zip(NODES, self.hosts.addresses[1:])),
            partition=PARTITION, slurm_user="root", state_dir=str(self.dir / "state"),
            spool_dir=str(self.dir / "spool" / "%n"), log_dir=str(self.dir / "log"), run_dir=str(self.dir / "run"),
            munge_socket=str(self.munge_socket), health_check_program=str(health),
            health_check_interval_s=health_interval_s, kill_wait_s=30, process_tracking="linuxproc")
        self.conf.write_text(render_slurm_conf(self.spec))
        (self.dir / "gres.conf").write_text(render_gres_conf(self.spec))
        (self.dir / "cgroup.conf").write_text(render_cgroup_conf(self.spec))

    def _daemon(self, index: int, name: str, argv: list[str]) -> subprocess.Popen:
        """`argv` on host `index` with its own hostname `name` (a UTS namespace inside the network namespace)."""
        # Not `ip netns exec`: it mounts a fresh /sys, hiding /sys/fs/cgroup, and slurmd 22.05 will not start
        # without a cgroup hierarchy even with proctrack/linuxproc. The namespace's own /etc/hosts and /etc/ddlc
        # are bound here as `ip netns exec` would (its files in /etc/netns/<namespace>).
        ns = self.hosts.namespaces[index]
        binds = " && ".join(f"mount --bind /etc/netns/{ns}/{item} /etc/{item}" for item in ("hosts", "ddlc"))
        inner = f"{binds} && hostname {shlex.quote(name)} && exec {shlex.join(argv)}"
        return subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "unshare", "--mount", "--uts",
                                 "sh", "-c", inner], stdout=subprocess.DEVNULL,
                                stderr=open(self.dir / "log" / f"{name}.err", "a"), env=self.env())

    def _start(self) -> None:
        self.procs.append(self._daemon(0, CONTROLLER, ["slurmctld", "-D", "-f", str(self.conf)]))
        self._wait(lambda: self.scontrol("ping").returncode == 0 and "UP" in self.scontrol("ping").stdout,
                   "slurmctld", self.dir / "log" / "slurmctld.log")
        for index, name in enumerate(NODES, start=1):
            self.procs.append(self._daemon(index, name, ["slurmd", "-D", "-N", name, "-f", str(self.conf)]))
        self.wait_nodes("idle", NODES)

    # -- use --------------------------------------------------------------------------------------------------
    def env(self, **extra: str) -> dict:
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env.setdefault("OMP_NUM_THREADS", "1")
        for name in [k for k in env if k.startswith(("SLURM_JOB", "SLURM_NODELIST", "SLURM_PROCID"))]:
            env.pop(name)
        env.update(extra)
        return env

    def run(self, argv: list[str], cwd: Optional[Path] = None, timeout: float = 120,
            **extra: str) -> subprocess.CompletedProcess:
        """`argv` on host a (the head node: where users run sbatch and `ddlc submit`)."""
        return subprocess.run(self.hosts.in_head(argv), cwd=cwd or REPO, env=self.env(**extra), capture_output=True,
                              text=True, timeout=timeout)

    def scontrol(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(["scontrol", *args], timeout=30)

    def node_states(self) -> dict[str, tuple[str, str]]:
        """node -> (state in lower case, e.g. 'idle', 'drained', 'allocated'; reason)."""
        proc = self.run(["sinfo", "-h", "-N", "-o", "%N|%T|%E"], timeout=30)
        states = {}
        for line in proc.stdout.splitlines():
            name, state, reason = line.split("|", 2)
            states[name] = (state.lower(), reason)
        return states

    def wait_nodes(self, state: str, names, timeout: float = 90) -> None:
        def ready() -> bool:
            states = self.node_states()
            return all(states.get(n, ("", ""))[0].startswith(state) for n in names)

        self._wait(ready, f"nodes {', '.join(names)} {state}", self.dir / "log" / "slurmctld.log", timeout)

    def job_state(self, job: str) -> str:
        proc = self.scontrol("show", "job", "-o", job)
        for word in proc.stdout.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return ""

    def wait_job(self, job: str, states, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job)
            if state in states:
                return state
            time.sleep(0.5)
        raise AssertionError(f"job {job} never reached {states} (now {self.job_state(job)}):\n"
                             f"{self.scontrol('show', 'job', job).stdout}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-2500:]}" for p in sorted((self.dir / "log").iterdir())
                         if p.is_file())

    def _wait(self, ready, what: str, log: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                text = log.read_text()[-3000:] if log.exists() else "(no log)"
                raise RuntimeError(f"{what} did not come up (exited: {dead}):\n{text}\n{self.logs() if (self.dir / 'log').exists() else ''}")
            time.sleep(0.3)

    def close(self) -> None:
        # Jobs first (their processes live in the hosts' namespaces), then the daemons, munged last.
        if self.conf.exists():
            try:
                self.run(["scancel", "--full", "--user=root"], timeout=20)
            except Exception:  # noqa: BLE001 (slurmctld may be the thing that failed)
                pass
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # slurmstepd of a job still running would outlive slurmd: kill what is left in the temp dir's name.
        for pid in _pids_mentioning(str(self.dir)):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def _pids_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if text.encode() in (entry / "cmdline").read_bytes() or text.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
