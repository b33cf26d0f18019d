"""Failure drills with real processes: kill -9 under elastic restarts, kill -9 during a save, preemption signals."""

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from ddlc.checkpoint.manifest import COMMIT
from ddlc.runtime.metrics import read_metrics
from ddlc.runtime.preemption import PREEMPTED_EXIT_CODE
from tests.support import CONFIG, FAST, PYTHON, TRAIN_PY, assert_ok, child_env, run, torchrun

DDLC = str(Path(PYTHON).parent / "ddlc")


def _start(cmd, cwd):
    # torchrun's shared rendezvous store can hand restarted workers a stale gloo address (pytorch#135712);
    # ddlc's launchers set this too.
    env = child_env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _kill_job(proc) -> None:
    """SIGKILL torchrun and every worker (workers may sit in sessions of their own)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        return
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass


def _communicate(proc, timeout):
    """Wait for the job; on timeout kill it and fail with what it printed."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_job(proc)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"job did not finish in {timeout}s\nSTDOUT:\n{stdout[-3000:]}\nSTDERR:\n{stderr[-6000:]}")


def _wait_for(predicate, timeout=120, interval=0.005, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.returncode}\n{proc.stderr.read()[-3000:]}")
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def _committed(ckpt: Path, step: int) -> bool:
    return (ckpt / f"step-{step:08d}" / COMMIT).exists()


def _last_logged_step(run_dir: Path) -> int:
    try:
        records = read_metrics(run_dir)
    except json.JSONDecodeError:  # a line being written right now
        return 0
    return records[-1]["step"] if records else 0


def test_kill_9_worker_under_max_restarts_resumes_from_last_commit(tmp_path):
    interval, steps = 20, 300
    run_dir, ckpt = tmp_path / "elastic", tmp_path / "elastic" / "checkpoints"
    cmd = torchrun("--standalone", "--nproc_per_node=2", "--max-restarts=2", str(TRAIN_PY), "--config", str(CONFIG),
                   *FAST, f"training.max_steps={steps}", f"checkpoint.interval_steps={interval}",
                   f"monitoring.run_dir={tmp_path}", "monitoring.run_name=elastic")
    proc = _start(cmd, tmp_path)
    try:
        _wait_for(lambda: _committed(ckpt, 2 * interval), proc=proc)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())]
        assert len(workers) == 2
        killed_at = _last_logged_step(run_dir)
        workers[1].send_signal(signal.SIGKILL)
        stdout, stderr = _communicate(proc, timeout=300)
    finally:
        _kill_job(proc)
    assert proc.returncode == 0, stderr[-4000:]
    resumed = [line for line in stdout.splitlines() if "resumed from" in line]
    assert len(resumed) == 1, stdout[-3000:]
    resume_step = int(resumed[0].rsplit("at step ", 1)[1])
    assert resume_step >= 2 * interval and resume_step % interval == 0
    # At most one interval lost (plus the few steps that run while an async save is in flight).
    assert resume_step >= killed_at - interval - 10, (killed_at, resume_step)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == steps and summary["start_step"] == resume_step


def _big_model_job(tmp_path, name):
    # ~150 MB of model + optimizer state: a save takes long enough to be caught in the middle.
    return ["model.n_layer=4", "model.n_embd=512", "model.n_head=8", "model.block_size=32",
            "data.synthetic_tokens=100000", "training.micro_batch_size=2", "training.global_batch_size=4",
            "training.max_steps=1000", "checkpoint.interval_steps=3", "checkpoint.keep_last=10",
            f"monitoring.run_dir={tmp_path}", f"monitoring.run_name={name}", "training.log_interval=1"]


def _in_flight_save(ckpt: Path):
    dirs = sorted(d for d in ckpt.glob("step-*") if d.is_dir())
    if len(dirs) >= 2 and (dirs[-2] / COMMIT).exists() and not (dirs[-1] / COMMIT).exists():
        return dirs[-1]
    return None


def test_kill_9_during_save_keeps_previous_checkpoint(tmp_path):
    for attempt in range(3):
        name = f"crash{attempt}"
        ckpt = tmp_path / name / "checkpoints"
        job = _big_model_job(tmp_path, name)
        proc = _start(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), "--config", str(CONFIG), *job),
                      tmp_path)
        try:
            victim = _wait_for(lambda: _in_flight_save(ckpt), timeout=180, proc=proc)
            _kill_job(proc)  # every process of the job, mid-save
        finally:
            _kill_job(proc)
            proc.communicate()
        if not (victim / COMMIT).exists():
            break  # caught it mid-save (otherwise the save won the race: try again)
    else:
        pytest.fail("could not interrupt a save in 3 attempts")

    previous = max(d for d in ckpt.glob("step-*") if (d / COMMIT).exists())
    assert previous < victim
    verify = run([DDLC, "checkpoints", "verify", str(ckpt)], cwd=tmp_path)
    assert verify.returncode == 1 and f"{victim.name}: not committed" in verify.stdout

    prev_step = int(previous.name.split("-")[1])
    resumed = run([PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *job, f"training.stop_at_step={prev_step + 1}",
                   "checkpoint.async_save=false"], cwd=tmp_path, timeout=300)
    assert_ok(resumed)
    assert f"resumed from {previous} at step {prev_step}" in resumed.stdout
    assert f"skipping checkpoint {victim}: not committed" in resumed.stderr


def test_sigterm_checkpoints_and_exits_with_preempted_code(tmp_path):
    job = [*FAST, "training.max_steps=100000", "checkpoint.interval_steps=1000", f"monitoring.run_dir={tmp_path}",
           "monitoring.run_name=spot", "training.log_interval=5"]
    proc = _start([PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *job], tmp_path)
    _wait_for(lambda: _last_logged_step(tmp_path / "spot") >= 10, proc=proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    stopped = int(re.search(r"stopped \([^)]*\) at step (\d+);", stderr).group(1))
    assert _committed(tmp_path / "spot" / "checkpoints", stopped)
    summary = json.loads((tmp_path / "spot" / "summary.json").read_text())
    assert summary["preempted"] is True and summary["steps"] == stopped
    again = run([PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *job, f"training.stop_at_step={stopped + 3}"],
                cwd=tmp_path)
    assert_ok(again)
    assert f"at step {stopped}" in again.stdout


def test_sigusr1_to_one_rank_stops_every_rank(tmp_path):
    job = [*FAST, "training.max_steps=100000", "checkpoint.interval_steps=1000", f"monitoring.run_dir={tmp_path}",
           "monitoring.run_name=preempt", "training.log_interval=5"]
    proc = _start(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), "--config", str(CONFIG), *job),
                  tmp_path)
    try:
        _wait_for(lambda: _last_logged_step(tmp_path / "preempt") >= 10, proc=proc)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())]
        workers[1].send_signal(signal.SIGUSR1)  # only one rank hears it
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        _kill_job(proc)
    assert f"exitcode  : {PREEMPTED_EXIT_CODE}" in stderr  # torchrun reports the workers' clean-stop code
    stopped = int(re.search(r"stopped \([^)]*\) at step (\d+);", stderr).group(1))
    assert _committed(tmp_path / "preempt" / "checkpoints", stopped)
