"""Resume is exact: stopping and resuming changes nothing, for DDP and FSDP2, and across world sizes."""

import json

import pytest
import torch

from ddlc.runtime.metrics import read_metrics
from tests.support import CONFIG, FAST, PYTHON, REPO, TRAIN_PY, assert_ok, run, torchrun

WORKER = REPO / "tests" / "runtime" / "dump_params_worker.py"
STEPS = 20


def _job(tmp_path, name, *extra):
    return [*FAST, f"training.max_steps={STEPS}", f"monitoring.run_dir={tmp_path / 'runs'}",
            f"monitoring.run_name={name}", "checkpoint.interval_steps=5", *extra]


def _torchrun_worker(tmp_path, out, overrides, nproc=2):
    return run(torchrun("--standalone", f"--nproc_per_node={nproc}", str(WORKER), str(out), str(CONFIG),
                        *overrides), cwd=tmp_path)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_stop_and_resume_is_bit_exact(tmp_path, strategy):
    straight = _job(tmp_path, f"straight-{strategy}", f"distributed.strategy={strategy}")
    assert_ok(_torchrun_worker(tmp_path, tmp_path / "straight", straight))

    split = _job(tmp_path, f"split-{strategy}", f"distributed.strategy={strategy}")
    assert_ok(_torchrun_worker(tmp_path, tmp_path / "first-half", [*split, f"training.stop_at_step={STEPS // 2}"]))
    half = json.loads((tmp_path / "runs" / f"split-{strategy}" / "summary.json").read_text())
    assert half["steps"] == STEPS // 2 and half["resumed_from"] is None
    assert_ok(_torchrun_worker(tmp_path, tmp_path / "resumed", split))
    summary = json.loads((tmp_path / "runs" / f"split-{strategy}" / "summary.json").read_text())
    assert summary["resumed_from"].endswith(f"step-{STEPS // 2:08d}") and summary["start_step"] == STEPS // 2

    losses_straight = [r["loss"] for r in read_metrics(tmp_path / "runs" / f"straight-{strategy}")]
    losses_split = [r["loss"] for r in read_metrics(tmp_path / "runs" / f"split-{strategy}")]
    assert len(losses_straight) == STEPS and losses_split == losses_straight  # exact float equality

    expected = torch.load(tmp_path / "straight" / "rank0.pt", weights_only=True)
    got = torch.load(tmp_path / "resumed" / "rank0.pt", weights_only=True)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_two_rank_save_resumes_on_one_rank(tmp_path):
    job = _job(tmp_path, "reshard", "distributed.strategy=fsdp")
    assert_ok(run(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), "--config", str(CONFIG), *job,
                           f"training.stop_at_step={STEPS // 2}"), cwd=tmp_path))
    proc = run([PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *job], cwd=tmp_path)
    assert_ok(proc)
    assert f"resumed from" in proc.stdout and f"at step {STEPS // 2}" in proc.stdout
    summary = json.loads((tmp_path / "runs" / "reshard" / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == STEPS
    records = read_metrics(tmp_path / "runs" / "reshard")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    # Same global batches on one rank (accumulation 2): the continuation matches the 2-rank straight run closely.
    straight = _job(tmp_path, "straight2")
    assert_ok(run(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), "--config", str(CONFIG),
                           *straight, "distributed.strategy=fsdp"), cwd=tmp_path))
    reference = [r["loss"] for r in read_metrics(tmp_path / "runs" / "straight2")]
    assert [r["loss"] for r in records] == pytest.approx(reference, rel=1e-4)
