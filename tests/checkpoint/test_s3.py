"""The same save/resume round trip against s3:// on a real HTTP endpoint (moto server on 127.0.0.1)."""

import json
import subprocess

import pytest

from ddlc.runtime.metrics import read_metrics
from tests.support import CONFIG, FAST, PYTHON, TRAIN_PY, MotoServer, assert_ok, run, torchrun
from pathlib import Path

DDLC = str(Path(PYTHON).parent / "ddlc")


@pytest.fixture(scope="module")
def s3(moto):
    """The session's moto server with this module's bucket (no other test may use `ckpt`)."""
    moto.create_bucket("ckpt")
    return moto


def test_s3_save_and_resume_round_trip(tmp_path, s3):
    uri = "s3://ckpt/runs/s3-demo"
    job = [*FAST, "training.max_steps=20", f"monitoring.run_dir={tmp_path}", "monitoring.run_name=s3",
           f"checkpoint.uri={uri}", "checkpoint.interval_steps=5", "checkpoint.keep_last=2"]
    first = run(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), "--config", str(CONFIG), *job,
                         "training.stop_at_step=10"), cwd=tmp_path, **s3.env)
    assert_ok(first)
    second = run(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), "--config", str(CONFIG), *job),
                 cwd=tmp_path, **s3.env)
    assert_ok(second)
    assert "resumed from s3://ckpt/runs/s3-demo/step-00000010 at step 10" in second.stdout
    assert [r["step"] for r in read_metrics(tmp_path / "s3")] == list(range(1, 21))

    listing = run([DDLC, "checkpoints", "list", uri], cwd=tmp_path, **s3.env)
    assert_ok(listing)
    assert "step-00000015" in listing.stdout and "step-00000020" in listing.stdout
    assert "step-00000010" not in listing.stdout  # keep_last=2 applied on S3 too
    verified = run([DDLC, "checkpoints", "verify", uri], cwd=tmp_path, **s3.env)
    assert_ok(verified)
    assert verified.stdout.count("OK") == 2
    exported = run([DDLC, "checkpoints", "export", uri, "-o", str(tmp_path / "model.pt")], cwd=tmp_path, **s3.env)
    assert_ok(exported)
    import torch

    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert "tok_emb.weight" in weights


def test_missing_bucket_is_a_clear_error(tmp_path, s3):
    proc = run([DDLC, "checkpoints", "list", "s3://no-such-bucket/x"], cwd=tmp_path, **s3.env)
    assert proc.returncode == 2
    assert "s3://no-such-bucket/x" in proc.stderr and "Traceback" not in proc.stderr


def test_s3_endpoint_dying_mid_run_fails_saves_on_every_rank_and_training_goes_on(tmp_path):
    """#12 item 4: the S3 endpoint (a real moto server) is killed after the first commit. Every later save fails on
    both ranks together (no rank waits out the 600 s collective timeout), training goes on to its last step, and
    the final save's failure ends the job with one error line and the checkpoint I/O exit code."""
    import time

    import boto3

    from ddlc.checkpoint.errors import CHECKPOINT_IO_EXIT_CODE
    from tests.support import child_env

    server = MotoServer()  # its own server, not the session's: this test kills it
    server.create_bucket("ckpt")
    client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    # A dead endpoint costs each S3 call botocore's retries with back-off (~10 s at its default of 5 attempts, per
    # call, several calls per save): two attempts keep the retry path and spare the suite ~40 s of back-off.
    env = {**server.env, "AWS_MAX_ATTEMPTS": "2"}
    job = [*FAST, "training.max_steps=150", "training.log_interval=10", f"monitoring.run_dir={tmp_path}",
           "monitoring.run_name=dies", "checkpoint.uri=s3://ckpt/dies", "checkpoint.interval_steps=30"]
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), "--config", str(CONFIG),
                                         *job), cwd=tmp_path, env=child_env(**env), stdout=subprocess.PIPE,
                                stderr=stderr, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                keys = [o["Key"] for o in client.list_objects_v2(Bucket="ckpt", Prefix="dies/").get("Contents", [])]
                if "dies/latest" in keys:  # first commit done; kill the endpoint (mid-save if the next one started)
                    break
                time.sleep(0.05)
            server.stop()
            stdout, _ = proc.communicate(timeout=300)  # before the fix: rank 1 waited 600 s per save
        finally:
            if proc.poll() is None:
                import os
                import signal

                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
            server.stop()
    err = stderr_path.read_text()
    workers = err.split("torch/distributed/elastic/multiprocessing/api.py")[0]  # torchrun's own report follows
    assert "Traceback" not in workers, workers[-4000:]
    failed = [line for line in workers.splitlines() if "failed and was not committed" in line]
    assert failed and len(failed) == len(set(failed)), workers[-3000:]  # said once (rank 0), not per rank
    assert "step 150/150" in stdout  # training went on to the end after the endpoint died
    assert f"exitcode  : {CHECKPOINT_IO_EXIT_CODE}" in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: checkpoint")]
    assert len(errors) == 1 and "step-00000150 could not be saved" in errors[0], err[-3000:]
    # Resuming while the endpoint is still dead is a storage failure, not "every checkpoint is corrupt": exit 74.
    resumed = run([PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *job], cwd=tmp_path, **env)
    assert resumed.returncode == CHECKPOINT_IO_EXIT_CODE, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot read the checkpoints under s3://ckpt/dies to resume" in errors[0], errors


def test_two_ranks_resume_what_they_just_saved_in_the_same_processes(tmp_path, s3):
    """Every rank must see the COMMIT rank 0 wrote, whatever its S3 client listed before: a stale listing made one
    rank skip the checkpoint while the other loaded it, and the job hung in DCP's collectives."""
    from tests.support import REPO

    worker = REPO / "tests" / "checkpoint" / "s3_same_process_worker.py"
    proc = run(torchrun("--standalone", "--nproc_per_node=2", str(worker), str(tmp_path), "s3://ckpt/same-process"),
               cwd=tmp_path, timeout=180, **s3.env)
    reports = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}
    assert set(reports) == {"rank0", "rank1"}, (reports, proc.stderr[-3000:])
    for report in reports.values():
        assert report == {"same": {"step": 2, "equal": True}, "fresh": {"step": 2, "equal": True}}, report
