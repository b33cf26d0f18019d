"""The non-finite guard in real torchrun runs: a NaN loss on one rank skips the update on every rank, N in a row
stop the job with exit 65, and no checkpoint of non-finite parameters is ever written."""

import json
from pathlib import Path

import pytest
import torch

from ddlc.errors import DIVERGED_EXIT_CODE
from ddlc.runtime.metrics import read_metrics
from tests.support import FAST, PYTHON, REPO, TRAIN_PY, assert_ok, run, torchrun

WORKER = REPO / "tests" / "runtime" / "nonfinite_worker.py"


def _worker(tmp_path, name, *overrides, nproc=2, **env):
    args = [*FAST, f"monitoring.run_dir={tmp_path / 'runs'}", f"monitoring.run_name={name}", *overrides]
    return run(torchrun("--standalone", f"--nproc_per_node={nproc}", str(WORKER), str(tmp_path / name), *args),
               cwd=tmp_path, timeout=300, **env)


def _reports(tmp_path, name, nproc=2):
    return [json.loads((tmp_path / name / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_nan_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path, strategy):
    proc = _worker(tmp_path, strategy, "training.max_steps=12", f"distributed.strategy={strategy}",
                   "checkpoint.enabled=false", POISON_STEPS="6,7", POISON_RANK="1")
    assert_ok(proc)
    for report in _reports(tmp_path, strategy):
        assert report["skipped"] == [6, 7] and all(report["unchanged"]), report
    records = read_metrics(tmp_path / "runs" / strategy)
    assert [r["step"] for r in records if r.get("skipped")] == [6, 7]
    assert records[-1]["step"] == 12 and records[-1]["loss"] == pytest.approx(records[-1]["loss"])  # finite again
    assert proc.stderr.count("update skipped") == 2
    if strategy == "ddp":  # replicas: identical on every rank only if every rank skipped the same steps
        ranks = [torch.load(tmp_path / strategy / f"rank{r}.pt") for r in range(2)]
        assert all(torch.equal(a, b) for a, b in zip(*ranks))


def _checkpoint_steps(root):
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*") if (p / "COMMIT").exists())


def test_divergence_stops_with_its_exit_code_and_keeps_the_good_checkpoint(tmp_path):
    """A parameter becomes inf before step 5: steps 5-7 are skipped, the save at step 6 is refused, the third in a
    row stops the job (exit 65), and the step-4 checkpoint survives although keep_last=1."""
    proc = _worker(tmp_path, "blowup", "training.max_steps=40", "training.max_nonfinite_steps=3",
                   "checkpoint.interval_steps=2", "checkpoint.keep_last=1", BLOWUP_STEP="5")
    assert proc.returncode != 0  # torchrun's own status is 1 whatever the workers' codes were
    assert [r["code"] for r in _reports(tmp_path, "blowup")] == [DIVERGED_EXIT_CODE] * 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged: steps 5-7" in errors[0], proc.stderr[-3000:]
    assert "[rank" not in proc.stderr  # no worker traceback
    assert "parameters are not finite at step 6: no checkpoint written" in proc.stderr
    root = tmp_path / "runs" / "blowup" / "checkpoints"
    assert _checkpoint_steps(root) == [4]
    assert (root / "latest").read_text().strip() == "step-00000004"
    export = tmp_path / "weights.pt"
    assert_ok(run([PYTHON, "-m", "ddlc", "checkpoints", "export", str(root), "-o", str(export)], cwd=tmp_path))
    weights = torch.load(export)
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_huge_lr_through_train_py_exits_65(tmp_path):
    """Divergence from the command line alone (`optimizer.lr=.inf` is a config error now): lr 1e30 turns the
    weights into ~1e30 at step 1, step 2's forward overflows, and two NaN steps in a row stop the job."""
    proc = run(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), *FAST, "training.max_steps=30",
                        "optimizer.lr=1e30", "optimizer.warmup_steps=0", "training.max_nonfinite_steps=2",
                        "checkpoint.interval_steps=1", f"monitoring.run_dir={tmp_path / 'runs'}",
                        "monitoring.run_name=lr"), cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    assert "error: training diverged" in proc.stderr, proc.stderr[-3000:]
    assert f"exitcode  : {DIVERGED_EXIT_CODE}" in proc.stderr  # what bare torchrun reports
    assert "steps 2-3" in proc.stderr
    assert _checkpoint_steps(tmp_path / "runs" / "lr" / "checkpoints") == [1, 2]  # finite (huge) weights only


@pytest.mark.parametrize("engine", ["horovod", "deepspeed"])
def test_engines_stop_a_diverged_run_with_exit_65(tmp_path, engine):
    """Horovod skips the update itself; DeepSpeed's ZeRO-2 skips it in its overflow check. Both stop after N."""
    pytest.importorskip("horovod.torch" if engine == "horovod" else "deepspeed")
    args = [str(TRAIN_PY), *FAST, "training.max_steps=30", "optimizer.lr=1e30", "optimizer.warmup_steps=0",
            "training.max_nonfinite_steps=3", "checkpoint.interval_steps=1", f"monitoring.run_dir={tmp_path}",
            "monitoring.run_name=run", "monitoring.progress=plain"]
    if engine == "horovod":
        cmd = [str(Path(PYTHON).parent / "horovodrun"), "-np", "2", "-H", "localhost:2", PYTHON, *args]
    else:
        cmd = torchrun("--standalone", "--nproc_per_node=2", *args, "distributed.strategy=deepspeed",
                       "distributed.deepspeed.zero_stage=2")
    # The DeepSpeed tests' extension directory: its shm comm op is compiled once per session, not once more here.
    proc = run(cmd, cwd=tmp_path, timeout=300, TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "error: training diverged" in output and "(3 in a row, training.max_nonfinite_steps=3)" in output, output[-3000:]
    assert ("Exit code: 65" if engine == "horovod" else f"exitcode  : {DIVERGED_EXIT_CODE}") in output
    assert "[rank" not in output  # no worker traceback
