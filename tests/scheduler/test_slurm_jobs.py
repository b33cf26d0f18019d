"""`ddlc submit`, `ddlc jobs`, preemption/requeue and `ddlc health --slurm-drain` on a real Slurm cluster
(tests/scheduler/cluster.py: slurmctld and two slurmd in network + UTS namespaces, slurm.conf from render_slurm_conf).

Every job is train.py with FAST shapes; the cluster is shared by the whole session.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from ddlc.runtime.metrics import read_metrics
from tests.scheduler.cluster import NODES, PARTITION, SlurmCluster
from tests.support import CONFIG, FAST, PYTHON, REPO, TRAIN_PY, assert_ok, run

DDLC = [PYTHON, "-m", "ddlc.cli.main"]
pytestmark = pytest.mark.slow


def train_args(tmp: Path, steps: int, *more: str) -> list[str]:
    return ["--config", str(CONFIG), *FAST, f"training.max_steps={steps}", f"monitoring.run_dir={tmp / 'runs'}",
            "monitoring.progress=plain", *more]


def submit(slurm: SlurmCluster, tmp: Path, *args: str) -> tuple[str, Path]:
    """`ddlc submit` on the head node; returns (job id, the run's directory)."""
    proc = slurm.run([*DDLC, "submit", *args], cwd=tmp)
    assert_ok(proc)
    match = re.search(r"submitted job (\d+): run (\S+), output (\S+)/slurm-\d+\.out", proc.stdout)
    assert match, proc.stdout
    return match.group(1), Path(match.group(3))


def output(run_dir: Path, job: str) -> str:
    path = run_dir / f"slurm-{job}.out"
    return path.read_text() if path.exists() else ""


def wait_for(run_dir: Path, job: str, pattern: str, slurm: SlurmCluster, after: int = 0, timeout: float = 240):
    """The first match of `pattern` in the job's output after character `after`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, output(run_dir, job)[after:])
        if match:
            return match
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} in the job's output:\n{output(run_dir, job)[-4000:]}\n{slurm.logs()}")


def wait_past(run_dir: Path, job: str, step: int, slurm: SlurmCluster, after: int, timeout: float = 240) -> int:
    """Wait until the job logs a step beyond `step` (steps are logged every training.log_interval)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logged = [int(s) for s in re.findall(r"step (\d+)/\d+", output(run_dir, job)[after:])]
        if logged and max(logged) > step:
            return max(logged)
        time.sleep(0.5)
    raise AssertionError(f"no step beyond {step} logged:\n{output(run_dir, job)[-4000:]}\n{slurm.logs()}")


def committed(run_dir: Path) -> list[int]:
    return sorted(int(c.parent.name.split("-")[1]) for c in (run_dir / "checkpoints").glob("step-*/COMMIT"))


# -- the cluster itself --------------------------------------------------------------------------------------
def test_generated_slurm_conf_runs_the_cluster(slurm):
    """slurmctld and both slurmd started from render_slurm_conf's file and the nodes registered idle."""
    states = slurm.node_states()
    assert sorted(states) == sorted(NODES) and all(s.startswith("idle") for s, _ in states.values()), states
    config = slurm.scontrol("show", "config").stdout
    for line in ("JobRequeue", "ReturnToService", "HealthCheckProgram"):
        assert re.search(rf"^{line}\s*=\s*\S", config, re.M), line
    assert re.search(r"^ReturnToService\s*=\s*2$", config, re.M) and re.search(r"^JobRequeue\s*=\s*1$", config, re.M)


# -- submit: a job to completion, the same losses as ddlc launch -----------------------------------------------
def test_submit_two_nodes_trains_like_ddlc_launch(slurm, tmp_path):
    steps = 8
    job, run_dir = submit(slurm, tmp_path, "--nodes", "2", "--time", "10", str(TRAIN_PY), "--",
                          *train_args(tmp_path, steps, "monitoring.run_name=sub"))
    assert run_dir == tmp_path / "runs" / "sub"
    state = slurm.wait_job(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"))
    assert state == "COMPLETED", output(run_dir, job)[-4000:] + slurm.logs()
    shown = slurm.scontrol("show", "job", "-o", job).stdout
    assert "NumNodes=2 " in shown and "NodeList=ddlc-host-[2-3]" in shown, shown
    text = output(run_dir, job)
    assert "--nnodes=2 --nproc_per_node=1 --rdzv-backend=c10d --rdzv-endpoint=ddlc-host-2:" in text, text[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == steps and summary["world_size"] == 2, summary

    # The same job through `ddlc launch` (2 workers, same config and seed): the same loss at every step.
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=2\n")
    proc = run([*DDLC, "launch", "--hostfile", str(hostfile), "--env-profile", "none", "--no-preflight",
                str(TRAIN_PY), "--", *train_args(tmp_path, steps, "monitoring.run_name=launched")], cwd=tmp_path,
               timeout=300)
    assert_ok(proc)
    launched = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "runs" / "launched")}
    submitted = {r["step"]: r["loss"] for r in read_metrics(run_dir)}
    assert sorted(submitted) == list(range(1, steps + 1)) and submitted == launched


# -- preemption: scontrol requeue and scancel both checkpoint; the requeued job resumes; jobs queue -----------
def test_requeue_resumes_from_the_checkpoint_and_scancel_checkpoints(slurm, tmp_path):
    job, run_dir = submit(slurm, tmp_path, "--nodes", "2", "--instance-type", "p4d.24xlarge", str(TRAIN_PY), "--",
                          *train_args(tmp_path, 100000, "checkpoint.interval_steps=100000"))
    second, second_dir = submit(slurm, tmp_path, "--nodes", "1", str(TRAIN_PY), "--",
                                *train_args(tmp_path, 4, "monitoring.run_name=second", "checkpoint.enabled=false"))
    wait_for(run_dir, job, r"step [3-9]\d*/100000", slurm)

    # Two jobs queue rather than collide: both nodes are the first job's, whole, while it trains.
    assert slurm.job_state(second) == "PENDING"
    listed = slurm.run([*DDLC, "jobs"], cwd=tmp_path).stdout
    assert re.search(rf"^{second}\s+second\s+PENDING\s+1\s", listed, re.M), listed
    # The same run again while its job is queued: refused (two jobs would write one run's files).
    again = slurm.run([*DDLC, "submit", "--nodes", "1", str(TRAIN_PY), "--",
                       *train_args(tmp_path, 4, "monitoring.run_name=second", "checkpoint.enabled=false")],
                      cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.startswith(
        f"error: run second already has job {second} (PENDING)"), again.stderr

    assert_ok(slurm.scontrol("requeue", job))  # SIGTERM to every task: the workers checkpoint, exit 75
    first = wait_for(run_dir, job, r"stopped \(signal SIGTERM\) at step (\d+); checkpoint saved", slurm)
    stopped_at = int(first.group(1))
    assert stopped_at in committed(run_dir)

    # Back in the queue, then running again: the same run, from that checkpoint (not from step 0).
    mark = len(output(run_dir, job))
    slurm.wait_job(job, ("PENDING",))
    # Slurm makes a requeued job wait before it is eligible again (reason BeginTime, about two minutes): now.
    slurm.scontrol("update", f"JobId={job}", "StartTime=now")
    resumed = wait_for(run_dir, job, r"ddlc: resumed from \S+/step-(\d+) at step (\d+)", slurm, after=mark,
                       timeout=300)
    assert int(resumed.group(1)) == stopped_at and int(resumed.group(2)) == stopped_at
    assert "(restart 1)" in output(run_dir, job)[mark:]
    wait_past(run_dir, job, stopped_at, slurm, after=mark)

    # `ddlc jobs` shows it running, with that checkpoint step.
    listed = slurm.run([*DDLC, "jobs"], cwd=tmp_path)
    assert_ok(listed)
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(job + " "))
    assert row[2] == "RUNNING" and row[3] == "2" and row[5] == str(stopped_at), listed.stdout
    assert re.fullmatch(r"\$\d+\.\d\d", row[6]), listed.stdout  # p4d.24xlarge's price x 2 nodes x elapsed

    # `ddlc jobs cancel` (scancel): one more checkpoint, then the job is over.
    assert_ok(slurm.run([*DDLC, "jobs", "cancel", job], cwd=tmp_path))
    last = wait_for(run_dir, job, r"stopped \(signal SIGTERM\) at step (\d+); checkpoint saved", slurm,
                    after=mark)
    assert int(last.group(1)) > stopped_at and int(last.group(1)) in committed(run_dir)
    assert slurm.wait_job(job, ("CANCELLED",)) == "CANCELLED"
    steps = [r["step"] for r in read_metrics(run_dir)]
    assert sorted(set(steps)) == list(range(1, max(steps) + 1))  # nothing trained twice is kept, nothing skipped
    # The queued job ran once nodes were free (during the requeue, or now).
    assert slurm.wait_job(second, ("COMPLETED", "FAILED", "CANCELLED")) == "COMPLETED", output(second_dir, second)
    assert json.loads((second_dir / "summary.json").read_text())["steps"] == 4


# -- a failing health check drains its node; a job avoids it; ddlc resumes it ---------------------------------
def test_failing_health_check_drains_the_node_and_jobs_avoid_it(slurm, tmp_path):
    bad = NODES[1]  # host c
    slurm.hosts.set_cluster_env(2, "DDLC_ROLE=worker\nDDLC_GPUS_PER_NODE=8\n")  # a GPU worker whose GPUs are gone
    try:
        slurm.wait_nodes("drain", [bad], timeout=120)  # slurmd runs HealthCheckProgram every HEALTH_INTERVAL_S
        state, reason = slurm.node_states()[bad]
        assert reason.startswith("ddlc health: gpus: 0 of 8 expected GPUs visible"), reason
        job, run_dir = submit(slurm, tmp_path, "--nodes", "1", str(TRAIN_PY), "--",
                              *train_args(tmp_path, 3, "monitoring.run_name=avoids"))
        assert slurm.wait_job(job, ("COMPLETED", "FAILED", "CANCELLED")) == "COMPLETED", output(run_dir, job)
        assert f"NodeList={NODES[0]} " in slurm.scontrol("show", "job", "-o", job).stdout
        # A 2-node job cannot start while c is drained.
        waiting, _ = submit(slurm, tmp_path, "--nodes", "2", str(TRAIN_PY), "--",
                            *train_args(tmp_path, 3, "monitoring.run_name=waits"))
        time.sleep(3)
        assert slurm.job_state(waiting) == "PENDING"
        slurm.run(["scancel", waiting])
    finally:
        slurm.hosts.set_cluster_env(2, "")
    # Healthy again: the next health check resumes the node ddlc drained.
    slurm.wait_nodes("idle", [bad], timeout=120)


def test_an_admins_drain_is_left_alone(slurm):
    """Healthy or not, a node an admin drained keeps the admin's reason and stays drained (were its reason
    replaced by ddlc's, the next passing check would resume it)."""
    node = NODES[0]
    health = ["ip", "netns", "exec", slurm.hosts.namespaces[1], *DDLC, "health", "--slurm-drain"]
    assert_ok(slurm.scontrol("update", f"NodeName={node}", "State=DRAIN", "Reason=disk swap by admin"))
    try:
        proc = slurm.run(health, SLURMD_NODENAME=node)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"slurm: node {node} stays drained: not drained by ddlc health (disk swap by admin)" in proc.stdout
        slurm.hosts.set_cluster_env(1, "DDLC_ROLE=worker\nDDLC_GPUS_PER_NODE=8\n")  # and now it fails too
        proc = slurm.run(health, SLURMD_NODENAME=node)
        assert proc.returncode == 1 and "stays drained" in proc.stdout, proc.stdout + proc.stderr
        assert slurm.node_states()[node] == ("drained", "disk swap by admin")
    finally:
        slurm.hosts.set_cluster_env(1, "")
        slurm.scontrol("update", f"NodeName={node}", "State=RESUME")
    slurm.wait_nodes("idle", [node])


# -- bad input: exit 2, one line, nothing queued ----------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--nodes", "3"], f"error: --nodes 3: partition '{PARTITION}' has 2 nodes"),
    (["--nodes", "1", "--partition", "gpu"], f"error: --partition 'gpu': no such partition (the cluster has: {PARTITION})"),
    (["--nodes", "1", "--time", "1:75"], "error: --time '1:75': seconds must be 0-59"),
    (["--nodes", "1", "--time", "soon"], "error: --time 'soon': expected minutes"),
    (["--nodes", "0"], "error: --nodes 0: must be at least 1"),
])
def test_bad_submit_exits_2_with_one_line(slurm, tmp_path, args, message):
    batch = "training.global_batch_size=12"  # divides over 1, 2 and 3 workers: only the cluster can say no
    proc = slurm.run([*DDLC, "submit", *args, str(TRAIN_PY), "--", *train_args(tmp_path, 3, batch)], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message), proc.stderr
    assert not slurm.run(["squeue", "-h", "-o", "%i"]).stdout.strip()  # nothing was queued
    assert not (tmp_path / "runs").exists()  # and nothing written


def test_missing_script_and_no_slurm_exit_2(slurm, tmp_path):
    proc = slurm.run([*DDLC, "submit", "--nodes", "1", "nope.py"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: script nope.py: no such file (in {tmp_path})")
    # Slurm's commands missing (not on PATH), and slurmctld down (a config naming a port nobody listens on).
    proc = slurm.run(["env", f"PATH={Path(PYTHON).parent}", *DDLC, "submit", "--nodes", "1", str(TRAIN_PY)],
                     cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no Slurm here: `sinfo` not found"), proc.stderr
    down = tmp_path / "slurm.conf"
    down.write_text(slurm.conf.read_text().replace("SlurmctldPort=6817", "SlurmctldPort=6999") + "MessageTimeout=2\n")
    proc = slurm.run([*DDLC, "submit", "--nodes", "1", str(TRAIN_PY)], cwd=tmp_path, SLURM_CONF=str(down))
    assert proc.returncode == 2 and proc.stderr.startswith("error: no Slurm reachable: `sinfo`"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = slurm.run([*DDLC, "jobs", "cancel", "999999"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: job 999999: no such job"), proc.stderr
