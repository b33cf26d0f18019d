#!/usr/bin/env python
"""Recovery from a lost node: elastic `ddlc launch --engine torchrun` vs stop-and-relaunch, in one run.

    sudo python benchmarks/recovery.py [--steps 400] [--interval 20] [--rounds 1]

Three hosts (network namespaces with their own sshd, as in tests/launch; needs root), a job of `--steps` steps
checkpointing every `--interval`. After the first checkpoint past 2 x interval, host c is lost:

- elastic, crash: kill -9 of every process on host c, then its link down; the job (--min-nodes 2) carries on.
- elastic, link down: only the link goes down (the processes live on, unreachable: a failed NIC or switch port).
- baseline (today's behaviour): a fixed-size job (every host required) stops at the loss, and the same job is
  relaunched at once on the two remaining hosts; it resumes from the newest checkpoint.

For each: seconds from the loss to the first step completed after recovery, and steps lost (last step completed
before the loss minus the step it resumed from). For the baseline also relaunch-to-first-step.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from tests.launch.helpers import job_args, launch_on  # noqa: E402
from tests.launch.hosts import Hosts, netns_unavailable  # noqa: E402

SHAPE = ["model.n_layer=2", "model.n_embd=128", "training.micro_batch_size=2", "training.global_batch_size=12",
         "training.log_interval=1"]
STEP = re.compile(r"\] step (\d+)/")
RESUMED = re.compile(r"ddlc: resumed from \S+ at step (\d+)")


class Job:
    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def steps(self, after: float = 0.0) -> list[tuple[float, int]]:
        return [(t, int(m.group(1))) for t, line in list(self.lines) if t >= after and (m := STEP.search(line))]

    def wait(self, predicate, timeout: float = 300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None and not self.reader.is_alive():
                value = predicate()
                if value:
                    return value
                raise RuntimeError("job ended:\n" + "\n".join(line for _, line in self.lines[-40:]))
            time.sleep(0.05)
        raise TimeoutError("\n".join(line for _, line in self.lines[-40:]))

    def resumed(self, after: float) -> int | None:
        for t, line in list(self.lines):
            m = RESUMED.search(line)
            if t >= after and m:
                return int(m.group(1))
        return None


def committed(checkpoints: Path) -> list[int]:
    return sorted(int(c.parent.name.split("-")[1]) for c in checkpoints.glob("step-*/COMMIT"))


def lose_node(hosts: Hosts, job: Job, checkpoints: Path, interval: int, how: str) -> tuple[float, int]:
    job.wait(lambda: [s for s in committed(checkpoints) if s >= 2 * interval])
    before = job.steps()
    lost_at = time.monotonic()
    if how == "crash":
        hosts.crash(2)
    else:
        hosts.link(2, up=False)
    return lost_at, before[-1][1]


def first_step_after(job: Job, after: float) -> tuple[int, float]:
    resumed = job.wait(lambda: job.resumed(after))
    at, step = job.wait(lambda: next(((t, s) for t, s in job.steps(after) if s == resumed + 1), None))
    return resumed, at


def elastic(hosts: Hosts, tmp: Path, args, how: str) -> dict:
    name = f"elastic-{how}"
    hostfile = hosts.hostfile(count=3, name="three")
    job = Job(launch_on(hosts, "torchrun", job_args(tmp / name / "p", tmp, name, args.steps, *SHAPE,
                                                    f"checkpoint.interval_steps={args.interval}"),
                        "--min-nodes", "2", "--rejoin-interval", "3600", hostfile=hostfile, wait=False))
    try:
        lost_at, last = lose_node(hosts, job, tmp / name / "checkpoints", args.interval, how)
        resumed, first = first_step_after(job, lost_at)
        return {"recovery_s": first - lost_at, "steps_lost": last - resumed}
    finally:
        job.proc.terminate()
        job.proc.wait(timeout=120)
        restore(hosts)


def baseline(hosts: Hosts, tmp: Path, args) -> dict:
    name = "baseline"
    hostfile = hosts.hostfile(count=3, name="three")
    extra = [f"checkpoint.interval_steps={args.interval}"]
    job = Job(launch_on(hosts, "torchrun", job_args(tmp / name / "p", tmp, name, args.steps, *SHAPE, *extra),
                        hostfile=hostfile, wait=False))  # --min-nodes = every host: stops at the first loss
    try:
        lost_at, last = lose_node(hosts, job, tmp / name / "checkpoints", args.interval, "crash")
        job.proc.wait(timeout=300)
        relaunched_at = time.monotonic()
        again = Job(launch_on(hosts, "torchrun", job_args(tmp / name / "p", tmp, name, args.steps, *SHAPE, *extra),
                              hostfile=hosts.hostfile(count=2, name="two"), wait=False))
        try:
            resumed, first = first_step_after(again, relaunched_at)
        finally:
            again.proc.terminate()
            again.proc.wait(timeout=120)
        return {"recovery_s": first - lost_at, "relaunch_to_first_step_s": first - relaunched_at,
                "stop_s": relaunched_at - lost_at, "steps_lost": last - resumed}
    finally:
        if job.proc.poll() is None:
            job.proc.kill()
        restore(hosts)


def restore(hosts: Hosts) -> None:
    """Bring host c back for the next scenario (a crashed host has no sshd; a cut one is only unplugged)."""
    hosts.link(2, up=True)
    if hosts.sshd[2].poll() is not None:
        hosts.revive(2)
    leftover = [p for p in hosts.processes(2) if p != hosts.sshd[2].pid]
    for pid in leftover:  # the link-down scenario's orphaned agent and workers
        try:
            subprocess.run(["kill", "-9", str(pid)], capture_output=True)
        except OSError:
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--interval", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    reason = netns_unavailable()
    if reason:
        print(f"recovery benchmark skipped: {reason}")
        return 0
    hosts = Hosts()
    tmp = Path(tempfile.mkdtemp(prefix="ddlc-recovery-"))
    results: dict[str, list[dict]] = {"elastic, kill -9 + link down": [], "elastic, link down only": [],
                                      "stop and relaunch (baseline)": []}
    try:
        for round_ in range(args.rounds):
            for label, run in (("elastic, kill -9 + link down", lambda: elastic(hosts, tmp / f"r{round_}", args, "crash")),
                               ("elastic, link down only", lambda: elastic(hosts, tmp / f"r{round_}", args, "link")),
                               ("stop and relaunch (baseline)", lambda: baseline(hosts, tmp / f"r{round_}", args))):
                result = run()
                results[label].append(result)
                print(f"round {round_ + 1} {label}: " + ", ".join(f"{k}={v:.1f}" for k, v in result.items()),
                      flush=True)
    finally:
        hosts.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nloss of 1 of 3 nodes, {args.steps} steps, checkpoint every {args.interval} (median of {args.rounds})")
    print(f"{'scenario':32} {'loss -> first step (s)':>24} {'steps lost':>11} {'relaunch -> first step (s)':>28}")
    medians = {}
    for label, rows in results.items():
        recovery = statistics.median(r["recovery_s"] for r in rows)
        lost = statistics.median(r["steps_lost"] for r in rows)
        relaunch = statistics.median(r["relaunch_to_first_step_s"] for r in rows) if "relaunch_to_first_step_s" \
            in rows[0] else None
        medians[label] = recovery
        print(f"{label:32} {recovery:24.1f} {lost:11.0f} {'' if relaunch is None else f'{relaunch:.1f}':>28}")
    base = medians["stop and relaunch (baseline)"]
    for label in ("elastic, kill -9 + link down", "elastic, link down only"):
        print(f"{label} / baseline recovery time: {medians[label] / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
