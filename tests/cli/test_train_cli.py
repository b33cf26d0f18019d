"""`ddlc train` as a user runs it: real torchrun workers, summary at the end, clear errors."""

import json
import shutil
from pathlib import Path

import pytest

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


def test_ddlc_train_names_the_run_when_config_does_not(tmp_path):
    proc = run([DDLC, "train", "--nproc", "1", *FAST, "training.max_steps=5", f"monitoring.run_dir={tmp_path}"],
               cwd=tmp_path)
    assert_ok(proc)
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("run-") and (runs[0] / "metrics.jsonl").exists()


def test_dry_run_prints_torchrun_command(tmp_path):
    proc = run([DDLC, "train", "--config", str(CONFIG), "--nproc", "3", "--dry-run", "training.global_batch_size=24",
                "monitoring.run_name=x"], cwd=tmp_path)
    assert_ok(proc)
    assert "torch.distributed.run --standalone --nproc_per_node=3 --max-restarts=0 -m ddlc.train --config" in proc.stdout
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


def test_ddlc_train_again_on_a_finished_run_summarises_without_a_traceback(tmp_path):
    """Re-running a job whose checkpoint already reached max_steps (a rerun after success, a restart after the final
    save) trains nothing: its summary has no loss, which the CLI table used to format as a number (TypeError)."""
    args = [DDLC, "train", "--nproc", "1", "--config", str(CONFIG), *FAST, "training.max_steps=3",
            f"monitoring.run_dir={tmp_path}", f"checkpoint.uri={tmp_path / 'ck'}"]
    assert_ok(run([*args, "monitoring.run_name=first"], cwd=tmp_path))
    proc = run([*args, "monitoring.run_name=again"], cwd=tmp_path)
    assert_ok(proc)
    assert "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["first_loss"] is None
    assert "no step trained" in proc.stdout
