"""Restarts and orphans with real processes, nothing set by the test beyond what the runbook says:

- the runbook's `torchrun ... --max_restarts=3` command, as written, recovers from kill -9 of a worker
  (it used to need TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, pytorch/pytorch#135712);
- the same drill through `ddlc train --max-restarts`;
- kill -9 of torchrun's agent: the workers checkpoint and exit instead of training on as orphans (#12).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import psutil
import pytest

from ddlc.runtime.metrics import read_metrics
from tests.ops.test_runbook import COMMANDS, RUNBOOK
from tests.support import CONFIG, FAST, PYTHON, TRAIN_PY, child_env, torchrun

RUNBOOK_TEXT = RUNBOOK.read_text()
DDLC = str(os.path.join(os.path.dirname(PYTHON), "ddlc"))


def _small_config(**sections) -> str:
    """FAST as a YAML file (the user's own config), with more settings per section."""
    import yaml

    data: dict = {}
    for item in FAST:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        data.setdefault(section, {})[name] = yaml.safe_load(value)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return yaml.safe_dump(data)


def _env(**extra):
    env = child_env(**extra)
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)  # the point: nobody sets it
    return env


def _wait_for(predicate, proc, timeout=240, what=""):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited {proc.returncode} while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _workers(proc):
    """Training processes under `proc` (torchrun's children; under ddlc train one level deeper)."""
    return [p for p in psutil.Process(proc.pid).children(recursive=True)
            if "ddlc.train" in " ".join(p.cmdline()) and "torchrun" not in " ".join(p.cmdline())
            and "torch.distributed.run" not in " ".join(p.cmdline())]


def _kill_a_worker_after_a_checkpoint(proc, checkpoints_committed):
    _wait_for(checkpoints_committed, proc, what="a committed checkpoint")
    _wait_for(lambda: len(_workers(proc)) == 2, proc, what="two workers")
    victim = _workers(proc)[-1]
    victim.kill()
    return victim.pid


def _kill_all(proc):
    """Whatever is left of a job, its orphaned workers included (found by their run's command line)."""
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        procs = []
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


@pytest.fixture
def bucket(moto) -> str:
    """A fresh checkpoint bucket per test on the session's moto server: the runbook's fixed run name
    (checkpoints/gpt-run1) would otherwise resume from another test's checkpoints."""
    import uuid

    bucket = f"ddlc-prod-checkpointsbucket-{uuid.uuid4().hex[:12]}"
    moto.create_bucket(bucket)
    return bucket


@pytest.mark.slow
def test_runbook_restart_command_as_written_survives_kill_9(tmp_path, moto, bucket):
    """docs/runbook.md §4, one node with 2 CPU workers: the placeholders come from the node's env files."""
    [command] = [c for c in COMMANDS if "--max_restarts" in c]
    # The user's gpt.yaml (in the directory the runbook runs from): a small model that still checkpoints often.
    (tmp_path / "gpt.yaml").write_text(_small_config(training={"max_steps": 60}, checkpoint={"interval_steps": 10},
                                                     monitoring={"progress": "plain"}))
    env = _env(DDLC_NODE_COUNT="1", DDLC_GPUS_PER_NODE="2", MASTER_ADDR="127.0.0.1", DDLC_CHECKPOINT_BUCKET=bucket,
               **moto.env)
    argv = ["bash", "-c", command]  # the shell expands the runbook's $VARIABLES, as on the node
    assert argv[2].startswith("torchrun ")
    env["PATH"] = os.path.dirname(PYTHON) + os.pathsep + env["PATH"]
    out = (tmp_path / "out").open("w")
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        client = moto.client("s3")

        def committed():
            listing = client.list_objects_v2(Bucket=bucket, Prefix="checkpoints/gpt-run1/")
            return any(o["Key"].endswith("/COMMIT") for o in listing.get("Contents", []))

        _kill_a_worker_after_a_checkpoint(proc, committed)
        assert proc.wait(timeout=600) == 0, (tmp_path / "out").read_text()[-5000:]
    finally:
        _kill_all(proc)
    output = (tmp_path / "out").read_text()
    assert "Connection refused" not in output
    assert re.search(r"resuming run gpt-run1 from step [1-9]", output), output[-3000:]
    summary = json.loads((tmp_path / "runs" / "gpt-run1" / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["world_size"] == 2
    assert [r["step"] for r in read_metrics(tmp_path / "runs" / "gpt-run1")] == list(range(1, 61))

    # §6 and §7 of the runbook on these checkpoints, as written: list, show, verify, export, prune.
    for section in ("6. Checkpoint and resume", "7. Maintain"):
        body = RUNBOOK_TEXT.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
        for line in [c for c in COMMANDS if c in body and c.startswith("ddlc checkpoints")]:
            proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            assert "Traceback" not in proc.stderr
    assert (tmp_path / "model.safetensors").stat().st_size > 0


@pytest.mark.slow
def test_ddlc_train_max_restarts_drill(tmp_path):
    """#20: `ddlc train --max-restarts 3`, kill -9 of a worker: the job restarts, resumes and finishes."""
    cmd = [DDLC, "train", "--config", str(CONFIG), "--max-restarts", "3", *FAST, "training.max_steps=300",
           "checkpoint.interval_steps=10", f"monitoring.run_dir={tmp_path}", "monitoring.run_name=drill",
           "monitoring.progress=plain"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=(tmp_path / "out").open("w"),
                            stderr=subprocess.STDOUT, text=True)
    try:
        _kill_a_worker_after_a_checkpoint(proc, lambda: any((tmp_path / "drill" / "checkpoints").glob("*/COMMIT")))
        assert proc.wait(timeout=600) == 0, (tmp_path / "out").read_text()[-5000:]
    finally:
        _kill_all(proc)
    output = (tmp_path / "out").read_text()
    assert re.search(r"resuming run drill from step [1-9]", output) and "Connection refused" not in output
    assert json.loads((tmp_path / "drill" / "summary.json").read_text())["steps"] == 300


@pytest.mark.slow
def test_workers_stop_after_a_checkpoint_when_torchrun_is_killed(tmp_path):
    """#12: kill -9 of the agent used to leave both workers training (and checkpointing) for good."""
    cmd = torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), "--config", str(CONFIG), *FAST,
                   "training.max_steps=100000", "checkpoint.interval_steps=100000", f"monitoring.run_dir={tmp_path}",
                   "monitoring.run_name=orphan", "monitoring.progress=plain")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=(tmp_path / "out").open("w"),
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    workers: list = []
    try:
        _wait_for(lambda: (tmp_path / "orphan" / "metrics.jsonl").exists()
                  and (tmp_path / "orphan" / "metrics.jsonl").stat().st_size > 0, proc, what="training")
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=300)
        assert not alive, f"orphaned workers still running: {alive}"
    finally:
        # The job runs in its own session: kill what is left of it (orphans are nobody's children), and nothing
        # else this test process started (moto servers, the CDK's jsii kernel are session fixtures).
        job_session = [q for q in psutil.process_iter() if _session_of(q.pid) == proc.pid]
        for p in [*job_session, *workers]:
            try:
                p.kill()
            except psutil.Error:
                pass
    summary = json.loads((tmp_path / "orphan" / "summary.json").read_text())
    assert summary["preempted"]
    assert (tmp_path / "orphan" / "checkpoints" / f"step-{summary['steps']:08d}" / "COMMIT").exists()
    assert "stopped (its launcher died)" in (tmp_path / "out").read_text()


def test_cluster_env_file_gives_torchrun_the_restart_setting(tmp_path):
    """Across nodes only torchrun's own environment can fix #135712: the node's cluster.env, sourced as the runbook
    says, exports it to every command started after it."""
    from ddlc.infra.user_data import CLUSTER_ENV, render_user_data
    from tests.infra.test_user_data import boot_config

    script = "\n".join(render_user_data(boot_config()))
    start = script.index(f"cat > {CLUSTER_ENV} <<'DDLC_ENV'\n") + len(f"cat > {CLUSTER_ENV} <<'DDLC_ENV'\n")
    (tmp_path / "cluster.env").write_text(script[start:script.index("\nDDLC_ENV\n", start)] + "\n")
    [line] = [c for c in RUNBOOK_TEXT.split("\n") if c.startswith("set -a && source /etc/ddlc/cluster.env")]
    line = line.split("#")[0].replace("/etc/ddlc/cluster.env", str(tmp_path / "cluster.env"))
    line = line.replace("&& source /etc/ddlc/master.env ", "")
    proc = subprocess.run(["bash", "-c", f"{line} && {PYTHON} -c 'import os; "
                           "print(os.environ[\"TORCH_DISABLE_SHARE_RDZV_TCP_STORE\"])'"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "1", (line, (tmp_path / "cluster.env").read_text(), proc.stderr)


def _session_of(pid: int):
    try:
        return os.getsid(pid)
    except OSError:
        return None
