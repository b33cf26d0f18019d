"""Validation loss (data.val_fraction, training.eval_interval/eval_batches): a held-out split that training never
reads, evaluated without disturbing training, on every engine, reported in metrics.jsonl, the summary and the
rank endpoint."""

import json
import math

import numpy as np
import pytest

from ddlc.config.loader import load_config
from ddlc.errors import UserError
from ddlc.monitor.training import TrainingMetrics
from ddlc.runtime.data import BatchPlan, GlobalBatchSampler, split_validation, synthetic_corpus, validation_batch
from ddlc.runtime.metrics import read_metrics
from tests.support import CONFIG, FAST, PYTHON, REPO, TRAIN_PY, assert_ok, run, torchrun


def _args(tmp_path, name, *extra):
    return ["--config", str(CONFIG), *FAST, f"monitoring.run_dir={tmp_path / 'runs'}", f"monitoring.run_name={name}",
            "checkpoint.enabled=false", "monitoring.progress=plain", *extra]


def _records(tmp_path, name):
    return read_metrics(tmp_path / "runs" / name)


def _summary(tmp_path, name):
    return json.loads((tmp_path / "runs" / name / "summary.json").read_text())


def test_the_validation_split_is_never_trained_on():
    corpus = synthetic_corpus(20_000, 64, 0, 32)
    train, val = split_validation(corpus, 0.1)
    assert val.num_windows == math.ceil(0.1 * corpus.num_windows) and train.num_windows + val.num_windows == corpus.num_windows
    val_rows = {corpus.window(val.start + i).tobytes() for i in range(val.num_windows)}
    plan = BatchPlan(micro_batch_size=4, grad_accum_steps=1, world_size=2)
    sampler = GlobalBatchSampler(train, plan, seed=3)
    seen = set()
    for step in range(3 * train.num_windows // plan.global_batch_size):  # three epochs, every rank
        for rank in range(2):
            inputs, targets = sampler.batch(step, 0, rank)
            for row_in, row_out in zip(inputs.numpy(), targets.numpy()):
                seen.add(np.concatenate([row_in, row_out[-1:]]).astype(corpus.shards[0].dtype).tobytes())
    assert len(seen) == train.num_windows and not seen & val_rows
    # Evaluation reads only held-out windows.
    inputs, targets = validation_batch(val, plan, 0, 1)
    assert inputs.shape == (4, 32)
    for row_in, row_out in zip(inputs.numpy(), targets.numpy()):
        assert np.concatenate([row_in, row_out[-1:]]).astype(corpus.shards[0].dtype).tobytes() in val_rows
    assert split_validation(corpus, 0.0) == (corpus, None)


def test_val_loss_on_the_endpoint_only_once_measured():
    metrics = TrainingMetrics("run-v", rank=0, world_size=1, node="n1", instance_type=None, num_nodes=1)
    metrics.observe_step(1, 5.0, 1e-3, 0.5, 0.2, 100, 2)
    metrics.publish()
    assert b"ddlc_train_val_loss" not in metrics.exposition()
    metrics.observe_step(2, 4.0, 1e-3, 0.5, 0.2, 100, 2, val_loss=4.25)
    metrics.observe_step(3, 3.9, 1e-3, 0.5, 0.2, 100, 2)  # not evaluated: the last value stays
    metrics.publish()
    assert b'ddlc_train_val_loss{node="n1",rank="0",run="run-v"} 4.25' in metrics.exposition()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_val_loss_two_ranks_finite_and_decreasing(tmp_path, strategy):
    name = f"val-{strategy}"
    proc = run(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY),
                        *_args(tmp_path, name, f"distributed.strategy={strategy}", "training.max_steps=30",
                               "data.val_fraction=0.05", "training.eval_interval=10", "training.eval_batches=4")),
               cwd=tmp_path, timeout=300)
    assert_ok(proc)
    records = _records(tmp_path, name)
    evaluated = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    assert [step for step, _ in evaluated] == [10, 20, 30]
    losses = [value for _, value in evaluated]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.3, losses
    assert _summary(tmp_path, name)["final_val_loss"] == losses[-1]
    assert "val loss" in proc.stdout


def test_deepspeed_reports_val_loss(tmp_path):
    pytest.importorskip("deepspeed")
    proc = run(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY),
                        *_args(tmp_path, "val-ds", "distributed.strategy=deepspeed", "distributed.deepspeed.zero_stage=3",
                               "training.max_steps=4", "training.log_interval=2", "data.val_fraction=0.05",
                               "training.eval_interval=2", "training.eval_batches=2")),
               cwd=tmp_path, timeout=400, TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
    assert_ok(proc)
    evaluated = {r["step"]: r["val_loss"] for r in _records(tmp_path, "val-ds") if "val_loss" in r}
    assert sorted(evaluated) == [2, 4] and all(math.isfinite(v) for v in evaluated.values())


def test_evaluating_does_not_change_training(tmp_path):
    """Same split, dropout on: evaluating every step, stopped at step 4 and resumed, gives bit-identical training
    losses to one uninterrupted run that evaluates at the end only (eval mode draws no random numbers, no_grad
    leaves no gradients, the data order and the checkpointed state are untouched)."""
    common = ["training.max_steps=8", "training.log_interval=2", "model.dropout=0.2", "data.val_fraction=0.05",
              "training.eval_batches=1"]
    assert_ok(run([PYTHON, str(TRAIN_PY), *_args(tmp_path, "end", *common)], cwd=tmp_path))
    every = [*_args(tmp_path, "every", *common, "training.eval_interval=1"), "checkpoint.enabled=true",
             "checkpoint.interval_steps=4"]
    assert_ok(run([PYTHON, str(TRAIN_PY), *every, "training.stop_at_step=4"], cwd=tmp_path))
    assert_ok(run([PYTHON, str(TRAIN_PY), *every], cwd=tmp_path))
    end, evaluated = _records(tmp_path, "end"), _records(tmp_path, "every")
    assert [r["step"] for r in evaluated] == list(range(1, 9))
    assert [r["loss"] for r in evaluated] == [r["loss"] for r in end]
    assert all("val_loss" in r for r in evaluated) and [r["step"] for r in end if "val_loss" in r] == [8]
    assert evaluated[-1]["val_loss"] == end[-1]["val_loss"]


@pytest.mark.parametrize("override, field", [
    ("training.eval_interval=5", "data.val_fraction"),  # evaluation without a split
    ("data.val_fraction=0.9", "data.val_fraction"),
    ("data.val_fraction=true", "data.val_fraction"),
    ("training.eval_batches=0", "training.eval_batches"),
    ("training.eval_batches=100001", "training.eval_batches"),
])
def test_bad_validation_settings_are_named(override, field):
    with pytest.raises(UserError) as error:
        load_config(None, [override])
    assert field in str(error.value) and "\n" not in str(error.value).strip()


def test_bad_validation_settings_exit_2(tmp_path):
    proc = run([PYTHON, str(TRAIN_PY), *_args(tmp_path, "bad", "training.eval_interval=5")], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.val_fraction" in lines[0], proc.stderr


def test_a_split_that_leaves_no_training_data_exits_2(tmp_path):
    proc = run([PYTHON, str(TRAIN_PY), *_args(tmp_path, "tiny", "data.synthetic_tokens=40", "data.val_fraction=0.5")],
               cwd=tmp_path)
    assert proc.returncode == 2 and "data.val_fraction=0.5 leaves no training data" in proc.stderr, proc.stderr
    assert load_config(None, ["data.val_fraction=0.5"]).data.val_fraction == 0.5


def test_resuming_with_another_val_fraction_exits_2(tmp_path):
    """Another split moves windows between training and validation: resuming with it would train on what was held
    out (and evaluate on trained-on data), silently. It is refused, naming the field; the checkpoint stays."""
    ckpt = ["checkpoint.enabled=true", f"checkpoint.uri={tmp_path / 'ckpt'}", "checkpoint.interval_steps=4",
            "training.eval_batches=1"]
    assert_ok(run([PYTHON, str(TRAIN_PY), *_args(tmp_path, "split", *ckpt, "training.max_steps=4",
                                                   "data.val_fraction=0.05")], cwd=tmp_path))
    proc = run([PYTHON, str(TRAIN_PY), *_args(tmp_path, "split", *ckpt, "training.max_steps=6",
                                              "data.val_fraction=0.1")], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.val_fraction=0.1" in lines[0] and "data.val_fraction=0.05" in lines[0], lines
    assert (tmp_path / "ckpt" / "step-00000004").is_dir()


def test_resume_on_other_data_is_said(tmp_path):
    """The checkpoint keeps what it was trained on. Resuming on other data (here: a longer synthetic corpus) goes
    on and says so once on stdout, naming both (another split is refused: the test above); the same data: nothing."""
    every = [*_args(tmp_path, "data", "training.max_steps=8", "training.log_interval=2", "data.val_fraction=0.05"),
             "checkpoint.enabled=true", "checkpoint.interval_steps=2"]
    assert_ok(run([PYTHON, str(TRAIN_PY), *every, "training.stop_at_step=2"], cwd=tmp_path))
    same = run([PYTHON, str(TRAIN_PY), *every, "training.stop_at_step=4"], cwd=tmp_path)
    assert_ok(same)
    assert "resumed from" in same.stdout and "was trained on" not in same.stdout + same.stderr
    other = run([PYTHON, str(TRAIN_PY), *every, "data.synthetic_tokens=300000"], cwd=tmp_path)
    assert_ok(other)
    notes = [line for line in other.stdout.splitlines() if "was trained on" in line]
    assert len(notes) == 1, other.stdout
    assert ("was trained on synthetic corpus (5,936 sequences of 32 tokens); this run reads synthetic corpus "
            "(8,905 sequences of 32 tokens)") in notes[0], notes
    assert "sample 32 of the new data's order" in notes[0], notes
