"""`ddlc train` as a user runs it: real torchrun workers, summary at the end, clear errors."""

import json
import re
import shutil
from pathlib import Path

import psutil
import pytest

from ddlc.runtime.metrics import read_metrics
from tests.support import CONFIG, FAST, PYTHON, REPO, assert_ok, run, torchrun

DDLC = str(Path(PYTHON).parent / "ddlc")


def test_ddlc_train_runs_two_workers_and_summarises(tmp_path):
    proc = run([DDLC, "train", "--config", str(CONFIG), *FAST, "training.max_steps=20",
                f"monitoring.run_dir={tmp_path}", "monitoring.run_name=cli"], cwd=tmp_path)
    assert_ok(proc)
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 20
    for label in ("steps", "loss", "throughput", "wall time", "run directory", "metrics"):
        assert label in proc.stdout
    assert f"{summary['final_loss']:.4f}" in proc.stdout


def test_ddlc_train_names_the_run_after_the_config_and_the_same_command_resumes(tmp_path):
    """#13: no run name given: one derived from the config, so launching the same command again resumes it, and
    re-running a finished run says so and rewrites nothing (it used to crash and overwrite summary.json)."""
    args = [DDLC, "train", "--nproc", "1", *FAST, "training.max_steps=5", f"monitoring.run_dir={tmp_path}"]
    first = run(args, cwd=tmp_path)
    assert_ok(first)
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1 and re.fullmatch(r"run-[0-9a-f]{8}", runs[0].name), runs
    assert f"starting run {runs[0].name}" in first.stdout
    kept = {p: p.read_bytes() for p in runs[0].rglob("*") if p.is_file()}
    again = run(args, cwd=tmp_path)
    assert_ok(again)
    assert "already finished" in again.stdout and "Traceback" not in again.stdout + again.stderr
    assert {p: p.read_bytes() for p in runs[0].rglob("*") if p.is_file()} == kept  # nothing rewritten
    longer = run([*args, "training.max_steps=8"], cwd=tmp_path)  # length is not part of the run's identity
    assert_ok(longer)
    assert f"resuming run {runs[0].name} from step 5" in longer.stdout
    assert [r["step"] for r in read_metrics(runs[0])] == list(range(1, 9))
    # Another computation: another run (the name the launch would use, read from the command it would run).
    other = run([*args, "--dry-run", "optimizer.lr=1e-3"], cwd=tmp_path)
    assert_ok(other)
    named = re.findall(r"monitoring\.run_name=(run-[0-9a-f]{8})", other.stdout)
    assert len(named) == 1 and named[0] != runs[0].name, other.stdout
    same = run([*args, "--dry-run"], cwd=tmp_path)  # while the same computation keeps its name
    assert_ok(same)
    assert f"monitoring.run_name={runs[0].name}" in same.stdout, same.stdout


def test_new_run_starts_over_and_keeps_the_old_directory(tmp_path):
    args = [DDLC, "train", "--nproc", "1", *FAST, "training.max_steps=3", f"monitoring.run_dir={tmp_path}",
            "monitoring.run_name=again"]
    assert_ok(run(args, cwd=tmp_path))
    old_summary = (tmp_path / "again" / "summary.json").read_bytes()
    proc = run([*args[:2], "--new-run", *args[2:]], cwd=tmp_path)
    assert_ok(proc)
    assert "starting run again" in proc.stdout and "resuming" not in proc.stdout
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("again.replaced-")]
    assert len(aside) == 1 and (aside[0] / "summary.json").read_bytes() == old_summary
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["start_step"] == 0


def test_dry_run_prints_torchrun_command(tmp_path):
    proc = run([DDLC, "train", "--config", str(CONFIG), "--nproc", "3", "--dry-run", "training.global_batch_size=24",
                "monitoring.run_name=x"], cwd=tmp_path)
    assert_ok(proc)
    assert "ddlc.launch.torchrun --standalone --nproc_per_node=3 --max-restarts=0" in proc.stdout
    assert "-m ddlc.train --config" in proc.stdout
    assert "training.global_batch_size=24" in proc.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "nope.yaml"], "config file not found: nope.yaml"),
        (["--config", str(CONFIG), "training.micro_batch_size=-2"], "training.micro_batch_size"),
        (["--config", str(CONFIG), "training.global_batch_size=15"], "not a multiple"),
        (["--config", str(CONFIG), "data.source=tokens", "data.path=/no/such/shards"], "data.path: no such file"),
        (["--config", str(CONFIG), "distributed.strategy=fsdpp"], "distributed.strategy"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    proc = run([DDLC, "train", *args], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "runs").exists()


def test_version_and_help(tmp_path):
    assert "ddlc 0.1.0" in run([DDLC, "--version"], cwd=tmp_path).stdout
    assert "train" in run([DDLC, "--help"], cwd=tmp_path).stdout


def test_library_example_from_docs_runs_under_torchrun(tmp_path):
    """docs/library.md embeds examples/custom_loop.py: it must stay a working program."""
    example = REPO / "examples" / "custom_loop.py"
    assert example.read_text().strip() in (REPO / "docs" / "library.md").read_text()
    assert_ok(run(torchrun("--standalone", "--nproc_per_node=2", str(example), str(tmp_path / "out")), cwd=tmp_path))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 20 and losses[-1] < losses[0]


# -- stopping: signals and `ddlc stop` (#13 items 6-7, #12 item 5) ------------------------------------------------

def _processes(root_pid):
    import psutil

    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


def _start_long_job(tmp_path, name):
    import subprocess
    import time

    from tests.support import child_env

    cmd = [DDLC, "train", "--nproc", "2", "--config", str(CONFIG), *FAST, "training.max_steps=100000",
           "checkpoint.interval_steps=100000", f"monitoring.run_dir={tmp_path}", f"monitoring.run_name={name}",
           "monitoring.progress=plain"]
    # Output to files: a pipe nobody reads while the job runs would fill up and block the workers.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=child_env(), stdout=(tmp_path / "stdout").open("w"),
                            stderr=(tmp_path / "stderr").open("w"), text=True)
    metrics = tmp_path / name / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.stat().st_size > 0):  # training has started on every rank
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()
        time.sleep(0.5)
    procs = _processes(proc.pid)
    assert len(procs) >= 4, procs  # ddlc train, torchrun's agent, 2 workers
    return proc, procs


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "ddlc stop"])
def test_stop_checkpoints_and_exits_75_without_a_traceback(tmp_path, how):
    name = "stop-" + how.replace(" ", "-").lower()
    proc, procs = _start_long_job(tmp_path, name)
    try:
        _stop_and_check(tmp_path, how, name, proc, procs)
    finally:
        for p in procs:  # by pid: workers orphaned by a failure are nobody's children any more
            try:
                p.kill()
            except psutil.Error:
                pass


def _stop_and_check(tmp_path, how, name, proc, procs):
    import signal

    if how == "SIGTERM":  # meanwhile, a second launch of the same run refuses instead of writing the same files
        second = run([DDLC, "train", "--nproc", "2", "--config", str(CONFIG), *FAST, "training.max_steps=100000",
                      "checkpoint.interval_steps=100000", f"monitoring.run_dir={tmp_path}",
                      f"monitoring.run_name={name}"], cwd=tmp_path, timeout=120)
        assert second.returncode == 2 and f"run {name} is already running" in second.stderr, second.stderr
    stopper = None
    if how == "ddlc stop":
        stopper = run([DDLC, "stop", "--run-dir", str(tmp_path)], cwd=tmp_path, timeout=300)  # the one running run
    else:
        proc.send_signal(getattr(signal, how))
    proc.wait(timeout=300)
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 75, stdout + stderr
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary["preempted"] and f"stopped cleanly at step {summary['steps']}" in stdout
    assert "Resume with:" in stdout and f"monitoring.run_name={name}" in stdout
    assert (tmp_path / name / "checkpoints" / f"step-{summary['steps']:08d}" / "COMMIT").exists()
    assert "Traceback" not in stdout + stderr and "ChildFailedError" not in stdout + stderr
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, alive  # no orphan: launcher, agent and both workers are gone (checked by pid)
    assert not (tmp_path / name / "launcher.json").exists() and not (tmp_path / name / "workers.json").exists()
    if stopper is not None:
        assert stopper.returncode == 0, stopper.stdout + stopper.stderr
        assert f"run {name} stopped at step {summary['steps']}" in stopper.stdout


def test_stop_without_a_running_run(tmp_path):
    proc = run([DDLC, "stop", "--run-dir", str(tmp_path)], cwd=tmp_path, timeout=60)
    assert proc.returncode == 1 and "no run is running" in proc.stdout
    (tmp_path / "r").mkdir()
    proc = run([DDLC, "stop", "r", "--run-dir", str(tmp_path)], cwd=tmp_path, timeout=60)
    assert proc.returncode == 1 and "run r is not running" in proc.stdout
    proc = run([DDLC, "stop", "nope", "--run-dir", str(tmp_path)], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_ddlc_train_again_on_a_finished_run_summarises_without_a_traceback(tmp_path):
    """Re-running a job whose checkpoint already reached max_steps (a rerun after success, a restart after the final
    save) trains nothing: its summary has no loss, which the CLI table used to format as a number (TypeError)."""
    args = [DDLC, "train", "--nproc", "1", "--config", str(CONFIG), *FAST, "training.max_steps=3",
            f"monitoring.run_dir={tmp_path}", f"checkpoint.uri={tmp_path / 'ck'}"]
    assert_ok(run([*args, "monitoring.run_name=first"], cwd=tmp_path))
    proc = run([*args, "monitoring.run_name=again"], cwd=tmp_path)
    assert_ok(proc)
    assert "Traceback" not in proc.stderr
    # #13: it says the run is finished and writes no summary with null losses (reports and dashboards read them).
    assert "already finished" in proc.stdout and not (tmp_path / "again" / "summary.json").exists()


@pytest.mark.slow
def test_a_second_ctrl_c_kills_the_job_without_a_checkpoint(tmp_path):
    """docs/runbook.md: a second Ctrl-C kills the job without a checkpoint. The workers are frozen (SIGSTOP) first,
    so the checkpoint the first Ctrl-C asks for cannot be written before the second one arrives: without that the
    two would race on this tiny model."""
    import signal
    import time

    proc, procs = _start_long_job(tmp_path, "twice")
    try:
        workers = [p for p in procs[1:] if not p.children()]
        assert len(workers) == 2, [p.cmdline() for p in procs]
        for worker in workers:
            worker.suspend()
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        # The first one was handled: torchrun got the SIGTERM it turns into (ddlc's own line is still buffered).
        while "Received 15 death signal" not in (tmp_path / "stderr").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()[-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        _, alive = psutil.wait_procs(procs, timeout=30)
    finally:
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 130, stdout + stderr  # 128 + SIGINT; it used to be 0, as if training had finished
    assert not alive, alive  # launcher, agent and both workers are gone
    assert "ddlc: run twice killed (Ctrl-C twice) without a checkpoint of this stop" in stdout, stdout[-3000:]
    assert "stopped cleanly" not in stdout and "Traceback" not in stdout + stderr, stdout[-3000:]
    assert not list((tmp_path / "twice" / "checkpoints").glob("step-*/COMMIT"))  # killed, not checkpointed


def test_new_run_sets_the_old_runs_memory_snapshots_aside_too(tmp_path):
    """A killed run leaves snapshots in <memory_dir>/<run>: --new-run moved only the run directory, and the new
    run's first resume took the old run's newest snapshot ("already finished", or steps from the old run)."""
    args = [DDLC, "train", "--nproc", "1", *FAST, "training.max_steps=3", f"monitoring.run_dir={tmp_path}",
            "monitoring.run_name=again", "checkpoint.memory_interval_steps=1", f"checkpoint.memory_dir={tmp_path}/shm"]
    assert_ok(run(args, cwd=tmp_path))
    # What a kill -9 leaves behind: a committed snapshot of the run in the memory tier (a clean end removes them).
    left = tmp_path / "shm" / "again" / "step-00000003"
    shutil.copytree(tmp_path / "again" / "checkpoints" / "step-00000003", left)
    proc = run([*args[:2], "--new-run", *args[2:]], cwd=tmp_path)
    assert_ok(proc)
    assert "starting run again" in proc.stdout and "resum" not in proc.stdout and "already finished" not in proc.stdout
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("again.replaced-")]
    assert (aside / "memory-tier" / "step-00000003" / "COMMIT").is_file()  # kept, off shared memory
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["start_step"] == 0


def test_a_fresh_start_in_a_used_run_directory_sets_the_old_step_records_aside(tmp_path):
    """checkpoint.resume=false in a run directory with records: the new steps were appended after the old ones,
    so every step appeared twice in metrics.jsonl (and in the dashboards and reports that read it)."""
    args = [DDLC, "train", "--nproc", "1", *FAST, "training.max_steps=3", f"monitoring.run_dir={tmp_path}",
            "monitoring.run_name=twice"]
    assert_ok(run(args, cwd=tmp_path))
    old = (tmp_path / "twice" / "metrics.jsonl").read_bytes()
    assert_ok(run([*args, "checkpoint.resume=false", "checkpoint.on_existing=move_aside"], cwd=tmp_path))
    assert [r["step"] for r in read_metrics(tmp_path / "twice")] == [1, 2, 3]
    [aside] = (tmp_path / "twice").glob("metrics.jsonl.replaced-*")
    assert aside.read_bytes() == old
