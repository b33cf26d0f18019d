"""The same save/resume round trip against s3:// on a real HTTP endpoint (moto server on 127.0.0.1)."""

import json
import subprocess

import pytest

from ddlc.runtime.metrics import read_metrics
from tests.support import CONFIG, FAST, PYTHON, TRAIN_PY, MotoServer, assert_ok, run, torchrun
from pathlib import Path

DDLC = str(Path(PYTHON).parent / "ddlc")


@pytest.fixture(scope="module")
def s3():
    server = MotoServer()
    server.create_bucket("ckpt")
    yield server
    server.stop()


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
