"""The host-memory checkpoint tier (#16), with real torchrun jobs over gloo and real DCP files:

- a worker killed with -9 under --max-restarts 1 resumes from the memory tier, loses less than one memory
  interval plus a snapshot's commit time (storage alone: up to interval_steps), and its losses equal an uninterrupted run's bit for bit;
- a corrupt memory snapshot is never loaded: the older snapshot (or storage) is, and the run is still exact;
- a tier that cannot fit in checkpoint.memory_dir stops the job before training (exit 2, one line, the numbers).
"""

import json
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from ddlc.checkpoint.manifest import COMMIT
from ddlc.runtime.metrics import read_metrics
from tests.checkpoint.test_failures import _communicate, _kill_job, _last_logged_step, _start, _wait_for
from tests.support import CONFIG, FAST, PYTHON, TRAIN_PY, assert_ok, run, torchrun
from tests.checkpoint.tmpfs import fill, mount_tmpfs

DDLC = str(Path(PYTHON).parent / "ddlc")

STEPS = 80


def _job(tmp_path, name, *extra):
    return [str(TRAIN_PY), "--config", str(CONFIG), *FAST, "training.log_interval=1", f"training.max_steps={STEPS}",
            f"monitoring.run_dir={tmp_path / 'runs'}", f"monitoring.run_name={name}", *extra]


@pytest.fixture(scope="module")
def straight_losses(tmp_path_factory):
    """Per-step losses of an uninterrupted 2-rank run, without the memory tier."""
    tmp_path = tmp_path_factory.mktemp("straight")
    assert_ok(run(torchrun("--standalone", "--nproc_per_node=2", *_job(tmp_path, "straight")), cwd=tmp_path))
    losses = [r["loss"] for r in read_metrics(tmp_path / "runs" / "straight")]
    assert len(losses) == STEPS
    return losses


def _losses(tmp_path, name):
    return [r["loss"] for r in read_metrics(tmp_path / "runs" / name)]


def _committed_steps(directory: Path) -> list[int]:
    return sorted(int(d.name.split("-")[1]) for d in directory.glob("step-*") if (d / COMMIT).exists())


def _resume_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if "resumed from" in line]
    assert len(lines) == 1, stdout[-3000:]
    return lines[0]


def test_kill_9_worker_resumes_from_memory_tier_bit_exact(tmp_path, straight_losses):
    interval, memory_interval = 20, 4
    shm = tmp_path / "shm"
    job = _job(tmp_path, "killed", f"checkpoint.interval_steps={interval}",
               f"checkpoint.memory_interval_steps={memory_interval}", f"checkpoint.memory_dir={shm}")
    proc = _start(torchrun("--standalone", "--nproc_per_node=2", "--max-restarts=1", *job), tmp_path)
    try:
        # Past the second storage checkpoint and at least one memory snapshot after it.
        _wait_for(lambda: _committed_steps(shm / "killed")[-1:] > [2 * interval]
                  if (shm / "killed").exists() else False, proc=proc)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())]
        assert len(workers) == 2
        killed_at = _last_logged_step(tmp_path / "runs" / "killed")
        workers[1].send_signal(signal.SIGKILL)
        stdout, stderr = _communicate(proc, timeout=300)
    finally:
        _kill_job(proc)
    assert proc.returncode == 0, stderr[-4000:]
    line = _resume_line(stdout)
    assert "memory tier" in line and str(shm / "killed") in line, line
    resume_step = int(line.rsplit("at step ", 1)[1])
    assert resume_step > 2 * interval and resume_step % memory_interval == 0 and resume_step % interval != 0
    # Lost: the steps since the newest committed snapshot, i.e. under one interval plus the few steps a snapshot
    # takes to commit (the one in flight at the kill is not used). Storage alone would lose up to 20 here.
    assert killed_at - resume_step < 2 * memory_interval, (killed_at, resume_step)
    summary = json.loads((tmp_path / "runs" / "killed" / "summary.json").read_text())
    assert summary["start_step"] == resume_step and summary["resumed_from"].startswith("memory tier")
    assert _losses(tmp_path, "killed") == straight_losses  # exact float equality
    assert not list((shm / "killed").iterdir())  # the finished run leaves nothing in host memory


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", ["newest", "both", "both, no storage checkpoint"])
def test_corrupt_memory_snapshot_falls_back(tmp_path, straight_losses, corrupt):
    interval, memory_interval = (1000 if "no storage" in corrupt else 10), 2
    name, shm = "corrupt", tmp_path / "shm"
    ckpt, tier = tmp_path / "runs" / name / "checkpoints", shm / name
    job = _job(tmp_path, name, f"checkpoint.interval_steps={interval}",
               f"checkpoint.memory_interval_steps={memory_interval}", f"checkpoint.memory_dir={shm}")

    def two_snapshots_past_storage():
        storage, memory = _committed_steps(ckpt), _committed_steps(tier) if tier.exists() else []
        if "no storage" in corrupt:
            return len(memory) >= 2 and memory[-2] >= 10
        return storage and storage[-1] >= 2 * interval and len(memory) >= 2 and memory[-2] > storage[-1]

    proc = _start(torchrun("--standalone", "--nproc_per_node=2", *job), tmp_path)
    try:
        _wait_for(two_snapshots_past_storage, proc=proc)
        _kill_job(proc)  # the whole job: nothing more is written
    finally:
        _kill_job(proc)
        proc.communicate()
    storage_step = (_committed_steps(ckpt) or [0])[-1]
    older, newest = _committed_steps(tier)[-2:]
    assert storage_step < older < newest
    if "no storage" in corrupt:  # a memory tier is a checkpoint store of its own
        listed = run([DDLC, "checkpoints", "list", str(tier)], cwd=tmp_path)
    else:  # listed after the storage checkpoints of its run
        listed = run([DDLC, "checkpoints", "list", str(ckpt), "--memory-dir", str(shm)], cwd=tmp_path)
        assert "memory tier" in listed.stdout.split(f"step-{storage_step:08d}", 1)[1], listed.stdout
    assert_ok(listed)
    assert f"step-{older:08d}" in listed.stdout and f"step-{newest:08d}" in listed.stdout, listed.stdout
    # Every snapshot for "both": a third may still be there if the kill came between a commit and retention.
    victims = [newest] if corrupt == "newest" else _committed_steps(tier)
    for step in victims:
        shards = sorted((tier / f"step-{step:08d}").glob("__*.distcp"))
        assert shards
        _flip_bytes(shards[0])

    proc = run(torchrun("--standalone", "--nproc_per_node=2", *job), cwd=tmp_path)
    if "no storage" in corrupt:  # the corrupt values were loaded before being rejected: never train on from them
        assert proc.returncode != 0 and "resumed from" not in proc.stdout
        assert "error: every memory-tier snapshot is corrupt" in proc.stderr and "refusing to start over" in proc.stderr
        return
    assert_ok(proc)
    line = _resume_line(proc.stdout)
    if corrupt == "newest":
        assert "memory tier" in line and line.endswith(f"step-{older:08d} at step {older}"), line
    else:
        assert "memory tier" not in line and line.endswith(f"step-{storage_step:08d} at step {storage_step}"), line
    assert "sha256 mismatch" in proc.stderr and f"step-{newest:08d}" in proc.stderr
    assert _losses(tmp_path, name) == straight_losses  # exact float equality


def test_memory_tier_that_cannot_fit_exits_2_with_the_numbers(tmp_path):
    small, roomy = tmp_path / "small", tmp_path / "roomy"
    mount_tmpfs(small, "1M")
    mount_tmpfs(roomy, "16M")
    try:
        job = _job(tmp_path, "small", "training.max_steps=6", "checkpoint.memory_interval_steps=2",
                   f"checkpoint.memory_dir={small}")
        proc = run([PYTHON, *job], cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        [line] = proc.stderr.strip().splitlines()  # one line, no traceback
        assert line.startswith("error: checkpoint.memory_interval_steps: the memory tier needs 3.1 MiB"), line
        assert f"checkpoint.memory_dir {small} has 1.0 MiB free" in line, line
        # The same job fits in 16 MiB: it runs, snapshots, and leaves the tmpfs empty when done.
        job = _job(tmp_path, "roomy", "training.max_steps=6", "checkpoint.memory_interval_steps=2",
                   f"checkpoint.memory_dir={roomy}")
        assert_ok(run([PYTHON, *job], cwd=tmp_path))
        assert not list((roomy / "roomy").iterdir())
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
        subprocess.run(["umount", str(roomy)], capture_output=True)


def test_memory_tier_out_of_space_turns_itself_off(tmp_path, straight_losses):
    """A snapshot that runs out of space at run time: one warning, the tier is off, training goes on and is exact."""
    shm = tmp_path / "shm"
    mount_tmpfs(shm, "16M")
    try:
        job = _job(tmp_path, "full", "checkpoint.interval_steps=30", "checkpoint.memory_interval_steps=2",
                   f"checkpoint.memory_dir={shm}")
        proc = _start(torchrun("--standalone", "--nproc_per_node=2", *job), tmp_path)
        try:
            _wait_for(lambda: (shm / "full").exists() and _committed_steps(shm / "full"), proc=proc)
            fill(shm)
            stdout, stderr = _communicate(proc, timeout=300)
        finally:
            _kill_job(proc)
        assert proc.returncode == 0, stderr[-4000:]
        warnings = [line for line in stderr.splitlines() if "memory tier" in line]
        assert len(warnings) == 1 and "ran out of space" in warnings[0] and "the tier is off" in warnings[0], warnings
        assert _committed_steps(tmp_path / "runs" / "full" / "checkpoints")[-1] == STEPS
        assert _losses(tmp_path, "full") == straight_losses
    finally:
        subprocess.run(["umount", str(shm)], capture_output=True)


@pytest.mark.parametrize("setting, named", [
    ("checkpoint.memory_interval_steps=0", "checkpoint.memory_interval_steps: Input should be greater than 0"),
    ("checkpoint.memory_interval_steps=true", "checkpoint.memory_interval_steps: Input should be a valid integer"),
    ("checkpoint.memory_dir=/proc/ddlc-cannot-be-here", "checkpoint.memory_dir /proc/ddlc-cannot-be-here: cannot create"),
])
def test_bad_memory_tier_settings_exit_2(tmp_path, setting, named):
    proc = run([PYTHON, *_job(tmp_path, "bad", "checkpoint.memory_interval_steps=2", setting)], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and named in line, line


def test_memory_snapshot_of_two_ranks_resumes_on_one(tmp_path):
    """DCP reshards: a snapshot written by 2 ranks loads on 1 (same node, the job relaunched smaller)."""
    name, shm = "reshard", tmp_path / "shm"
    tier = shm / name
    job = _job(tmp_path, name, "checkpoint.interval_steps=1000", "checkpoint.memory_interval_steps=3",
               f"checkpoint.memory_dir={shm}")
    proc = _start(torchrun("--standalone", "--nproc_per_node=2", *job), tmp_path)
    try:
        _wait_for(lambda: tier.exists() and (_committed_steps(tier) or [0])[-1] >= 9, proc=proc)
        _kill_job(proc)
    finally:
        _kill_job(proc)
        proc.communicate()
    newest = _committed_steps(tier)[-1]
    proc = run([PYTHON, *job], cwd=tmp_path)
    assert_ok(proc)
    line = _resume_line(proc.stdout)
    assert "memory tier" in line and line.endswith(f"step-{newest:08d} at step {newest}"), line
    summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["start_step"] == newest and summary["steps"] == STEPS


def test_fsdp_job_killed_resumes_from_memory_tier_bit_exact(tmp_path):
    """FSDP2 shards (DTensors) go through the tier too: the whole job killed, rerun, resumes from memory, exact."""
    fsdp = "distributed.strategy=fsdp"
    assert_ok(run(torchrun("--standalone", "--nproc_per_node=2", *_job(tmp_path, "straight-fsdp", fsdp)),
                  cwd=tmp_path))
    name, shm = "fsdp", tmp_path / "shm"
    job = _job(tmp_path, name, fsdp, "checkpoint.interval_steps=1000", "checkpoint.memory_interval_steps=3",
               f"checkpoint.memory_dir={shm}")
    proc = _start(torchrun("--standalone", "--nproc_per_node=2", *job), tmp_path)
    try:
        _wait_for(lambda: (shm / name).exists() and len(_committed_steps(shm / name)) >= 2, proc=proc)
        _kill_job(proc)
    finally:
        _kill_job(proc)
        proc.communicate()
    newest = _committed_steps(shm / name)[-1]
    proc = run(torchrun("--standalone", "--nproc_per_node=2", *job), cwd=tmp_path)
    assert_ok(proc)
    line = _resume_line(proc.stdout)
    assert "memory tier" in line and line.endswith(f"step-{newest:08d} at step {newest}"), line
    assert _losses(tmp_path, name) == _losses(tmp_path, "straight-fsdp")  # exact float equality
