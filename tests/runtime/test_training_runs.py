"""Real training processes: plain python, torchrun (DDP, FSDP2), and a two-node launch on one machine."""

import json
import subprocess

import pytest
import torch

from ddlc.runtime.metrics import read_metrics
from tests.support import CONFIG, FAST, PYTHON, REPO, TRAIN_PY, assert_ok, child_env, free_port, run, torchrun

WORKER = REPO / "tests" / "runtime" / "dump_params_worker.py"
STEPS = 40


def _overrides(tmp_path, name, *extra):
    return [*FAST, f"training.max_steps={STEPS}", f"monitoring.run_dir={tmp_path / 'runs'}",
            f"monitoring.run_name={name}", *extra]


def _summary(tmp_path, name):
    return json.loads((tmp_path / "runs" / name / "summary.json").read_text())


def _assert_learned(tmp_path, name, world_size):
    summary = _summary(tmp_path, name)
    assert summary["steps"] == STEPS and summary["world_size"] == world_size
    records = read_metrics(tmp_path / "runs" / name)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # one record per step
    for key in ("loss", "lr", "grad_norm", "step_time_s", "tokens_per_s"):
        assert all(isinstance(r[key], float) for r in records), key
    first = sum(r["loss"] for r in records[:5]) / 5
    last = sum(r["loss"] for r in records[-5:]) / 5
    assert last < 0.75 * first, (first, last)
    assert (tmp_path / "runs" / name / "config.yaml").exists()
    return records


def test_single_process_python(tmp_path):
    proc = run([PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *_overrides(tmp_path, "single")], cwd=tmp_path)
    assert_ok(proc)
    assert f"step {STEPS}/{STEPS}" in proc.stdout
    _assert_learned(tmp_path, "single", 1)


def _params(out, world):
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_workers_identical_params(tmp_path, strategy):
    out = tmp_path / "params"
    name = f"tr-{strategy}"
    cmd = torchrun("--standalone", "--nproc_per_node=2", str(WORKER), str(out), str(CONFIG),
                   *_overrides(tmp_path, name, f"distributed.strategy={strategy}"))
    assert_ok(run(cmd, cwd=tmp_path))
    _assert_learned(tmp_path, name, 2)
    rank0, rank1 = _params(out, 2)
    assert rank0.keys() == rank1.keys() and len(rank0) > 5
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key


def test_ddp_and_fsdp_agree(tmp_path):
    """Same seed and data: DDP and FSDP2 reach (numerically) the same weights."""
    results = {}
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        cmd = torchrun("--standalone", "--nproc_per_node=2", str(WORKER), str(out), str(CONFIG),
                       *_overrides(tmp_path, f"agree-{strategy}", f"distributed.strategy={strategy}",
                                   "training.max_steps=10"))
        assert_ok(run(cmd, cwd=tmp_path))
        results[strategy] = _params(out, 1)[0]
    for key, value in results["ddp"].items():
        torch.testing.assert_close(results["fsdp"][key], value, rtol=1e-3, atol=1e-4)


def test_two_node_launch_on_one_machine(tmp_path):
    port = free_port()
    procs = []
    for node_rank in (0, 1):
        cmd = torchrun("--nnodes=2", f"--node_rank={node_rank}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                       f"--master_port={port}", str(TRAIN_PY), "--config", str(CONFIG),
                       *_overrides(tmp_path, "two-node"))
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr[-4000:]
    assert "2 x cpu (gloo)" in outputs[0][0]
    _assert_learned(tmp_path, "two-node", 2)


def test_world_size_does_not_change_the_data(tmp_path):
    """1 worker with 2x accumulation sees the same global batches as 2 workers: losses match closely."""
    one = run([PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *_overrides(tmp_path, "w1")], cwd=tmp_path)
    assert_ok(one)
    two = run(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), "--config", str(CONFIG),
                       *_overrides(tmp_path, "w2")), cwd=tmp_path)
    assert_ok(two)
    loss1 = [r["loss"] for r in read_metrics(tmp_path / "runs" / "w1")]
    loss2 = [r["loss"] for r in read_metrics(tmp_path / "runs" / "w2")]
    assert loss1 == pytest.approx(loss2, rel=1e-4)
