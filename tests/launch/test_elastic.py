"""Elastic `ddlc launch --engine torchrun` on three real hosts (network namespaces with their own sshd).

- A host dies mid-run (kill -9 of every process on it, then its link goes down): the job finishes every step on
  the two others from the newest checkpoint, with the same per-step losses as an uninterrupted run up to it; the
  host comes back and is part of the job after the next rendezvous.
- A host failing `ddlc health` is left out; then losing one more drops the job below --min-nodes: a clear error,
  a non-zero exit and no process left behind.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from ddlc.runtime.metrics import read_metrics
from tests.launch.helpers import WORKER, job_args, launch_on
from tests.support import REPO, assert_ok, run, torchrun

STEPS, INTERVAL = 500, 20
# Big enough that a step takes tens of milliseconds (the job must outlive a crash, a recovery and a rejoin);
# a global batch of 12 divides over 3 and over 2 workers.
SHAPE = ["model.n_layer=2", "model.n_embd=128", "training.micro_batch_size=2", "training.global_batch_size=12",
         f"checkpoint.interval_steps={INTERVAL}"]


class Job:
    """`ddlc launch` running in the background; its output collected line by line with arrival times."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines, self.started = proc, [], time.monotonic()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern: str, after: float = 0.0, timeout: float = 240) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                match = re.search(pattern, line) if at >= after else None
                if match:
                    return match
            assert self.proc.poll() is None or self._reader.is_alive(), self.text()[-4000:]
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r} in time:\n{self.text()[-4000:]}")

    def finish(self, timeout: float = 300) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        return code

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def committed(checkpoints: Path) -> list[int]:
    return sorted(int(c.parent.name.split("-")[1]) for c in checkpoints.glob("step-*/COMMIT"))


def leftovers(marker: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and "ddlc.cli.main" not in cmdline:
            found.append(cmdline)
    return found


def first_attempt(records: list[dict]) -> list[dict]:
    """Records up to the first restart (a restarted run logs from its checkpoint's step on again)."""
    for index in range(1, len(records)):
        if records[index]["step"] <= records[index - 1]["step"]:
            return records[:index]
    return records


@pytest.mark.slow
def test_node_dies_job_finishes_on_the_others_and_it_rejoins(hosts, tmp_path):
    name = f"elastic-{int(time.time())}"
    hostfile = hosts.hostfile(count=3, name="three")
    slow = tmp_path / "slow-while-this-exists"  # the rest of the job then outlasts the recovery and the rejoin
    # ConnectTimeout: a probe of the dead host gives up sooner than ddlc's default 10 s, so the rejoin is noticed sooner.
    job = Job(launch_on(hosts, "torchrun", job_args(tmp_path / "p", tmp_path, name, STEPS, *SHAPE), "--min-nodes",
                        "2", "--rejoin-interval", "1", "--env", f"DDLC_TEST_SLOW_WHILE={slow}",
                        "--ssh-option", "ConnectTimeout=4", hostfile=hostfile, wait=False))
    checkpoints = tmp_path / name / "checkpoints"
    try:
        job.wait_for(r"\| 3 x cpu")
        while not [s for s in committed(checkpoints) if s >= 2 * INTERVAL]:
            assert job.proc.poll() is None, job.text()[-3000:]
            time.sleep(0.1)
        slow.touch()
        crashed_at = time.monotonic()
        killed = hosts.crash(2)  # every process on host c, then its link goes down
        assert killed
        newest = committed(checkpoints)[-1]

        lost = job.wait_for(r"ddlc launch: node 10\.213\.0\.3 lost at [0-9:]{8}: (.*)", after=crashed_at)
        assert "ssh connection lost" in lost.group(1)
        job.wait_for(r"ddlc launch: carrying on with 2 nodes \(restart 1 of 3\)", after=crashed_at)
        resumed = job.wait_for(r"ddlc: resumed from \S+/step-(\d+) at step (\d+)", after=crashed_at)
        assert int(resumed.group(1)) == newest, "did not resume from the newest committed checkpoint"
        job.wait_for(r"\| 2 x cpu", after=crashed_at)
        assert not [p for p in hosts.processes(2)], "host c was supposed to be dead"

        revived_at = time.monotonic()
        hosts.revive(2)
        job.wait_for(r"ddlc launch: node 10\.213\.0\.3 is reachable and healthy at [0-9:]{8} \(lost: ssh connection "
                     r"lost", after=revived_at, timeout=120)
        job.wait_for(r"\| 3 x cpu", after=revived_at)  # part of the job after the next rendezvous
        # A rejoin is a membership change for every agent, not a worker failure that spends one of --max-restarts
        # (workers that follow a peer's stop wait for their own agent to notice the new node).
        assert not [line for at, line in job.lines if at >= revived_at and "failed (exitcode" in line], job.text()[-4000:]
        slow.unlink()
        code = job.finish()
    finally:
        if job.proc.poll() is None:
            job.proc.kill()
        hosts.revive(2) if not hosts.processes(2) else None
    output = job.text()
    assert code == 0, output[-5000:]
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["world_size"] == 3
    assert not leftovers(name)

    # Up to the checkpoint it resumed from, the losses are the uninterrupted run's (same world size, same data).
    reference = tmp_path / "reference"
    proc = run(torchrun("--standalone", "--nproc_per_node=3", str(WORKER), str(tmp_path / "ref-params"),
                        *job_args(tmp_path / "ref-params", tmp_path, "reference", STEPS, *SHAPE,
                                  f"training.stop_at_step={newest}", "checkpoint.enabled=false")[1:]),
               cwd=REPO, timeout=300)
    assert_ok(proc)
    expected = {r["step"]: r["loss"] for r in read_metrics(reference)}
    got = {r["step"]: r["loss"] for r in first_attempt(read_metrics(tmp_path / name)) if r["step"] <= newest}
    assert len(got) == newest and got == {s: expected[s] for s in got}
    steps = sorted({r["step"] for r in read_metrics(tmp_path / name)})
    assert steps == list(range(1, STEPS + 1))  # every step trained and logged


@pytest.mark.slow
def test_unhealthy_host_left_out_then_below_min_nodes_stops(hosts, tmp_path):
    name = f"below-min-{int(time.time())}"
    hostfile = hosts.hostfile(count=3, name="three")
    hosts.set_cluster_env(2, "DDLC_ROLE=worker\nDDLC_GPUS_PER_NODE=8\n")  # a GPU worker whose GPUs are gone
    job = Job(launch_on(hosts, "torchrun", job_args(tmp_path / "p", tmp_path, name, 100000, *SHAPE),
                        "--min-nodes", "2", hostfile=hostfile, wait=False))
    try:
        left_out = job.wait_for(r"ddlc launch: leaving out host 10\.213\.0\.3: health check failed: (.*)")
        assert "gpus: 0 of 8 expected GPUs visible" in left_out.group(1)
        job.wait_for(r"\| 2 x cpu")
        job.wait_for(r"step \d+/100000")
        crashed_at = time.monotonic()
        hosts.crash(1)
        job.wait_for(r"ddlc launch: node 10\.213\.0\.2 lost at", after=crashed_at)
        code = job.finish(timeout=120)
    finally:
        hosts.set_cluster_env(2, "")
        if job.proc.poll() is None:
            job.proc.kill()
        if not hosts.processes(1):
            hosts.revive(1)
    output = job.text()
    assert code not in (0, None), output[-3000:]
    assert "ddlc launch: 1 node left, fewer than --min-nodes 2; stopping the job" in output
    assert "10.213.0.3 is reachable and healthy" not in output  # still unhealthy: never let in
    assert not leftovers(name)
