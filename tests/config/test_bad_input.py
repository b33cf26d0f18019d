"""Bad input through the real entry points: `ddlc train` refuses it before any worker starts; under bare
torchrun every worker refuses it before any collective, rank 0 alone says so, and every worker exits 2."""

import re

import pytest

from tests.support import CONFIG, FAST, PYTHON, TRAIN_PY, run, torchrun

DDLC = [PYTHON, "-m", "ddlc"]


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def _bomb() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 12)]
    return "\n".join(lines) + "\ntraining: {max_steps: *a11}\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a-file").write_text("not a directory\n")
    (tmp_path / "bomb.yaml").write_text(_bomb())
    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    return tmp_path


@pytest.mark.parametrize(
    "args, expected",
    [
        (["training.max_steps=1e23"], "training.max_steps: Input should be a valid integer (got '1e23')"),
        (["optimizer.lr=.inf"], "optimizer.lr: Value error, Input should be a finite number"),
        (["optimizer.betas=[0.9, 1.5]"], "optimizer.betas.1: Input should be less than 1"),
        (["model.n_embd=1000000"], "model: n_layer=2 n_embd=1000000 block_size=64 is too large for this machine"),
        (["checkpoint.uri={tmp}/a-file"], "checkpoint.uri: {tmp}/a-file is a file, not a directory"),
        (["training.global_batch_size=24"], "training.global_batch_size=24 is not a multiple of micro_batch_size (8) x world size (2) = 16"),
        (["--config", "{tmp}/bomb.yaml"], "bomb.yaml: expands to more than 10,000 values"),
        # an empty `key=` is null: refused, naming the key, wherever the key needs a value
        (["model.n_layer="], "model.n_layer: Input should be a valid integer (got None)"),
        (["training.max_steps="], "training: set exactly one of training.max_steps and training.epochs"),
    ],
)
def test_ddlc_train_refuses_before_any_worker_starts(files, args, expected):
    args = [a.format(tmp=files) for a in args]
    config = [] if "--config" in args else ["--config", str(CONFIG)]
    proc = run([*DDLC, "train", *config, "--nproc", "2", *args], cwd=files, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert expected.format(tmp=files).replace("Value error, ", "") in _one_error_line(proc.stderr)
    assert "ddlc: run" not in proc.stdout and not (files / "runs").exists()  # no worker ever started


def test_empty_config_trains_on_the_defaults_and_says_so(files):
    proc = run([*DDLC, "train", "--config", str(files / "empty.yaml"), "--dry-run"], cwd=files, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == f"note: {files / 'empty.yaml'} is empty: training with the built-in defaults " \
                                  "(see docs/configuration.md)"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.global_batch_size=12", "training.global_batch_size=12 is not a multiple of micro_batch_size (4)"),
        ("model.n_embd=1000000", "model: n_layer=1 n_embd=1000000 block_size=32 is too large for this machine"),
        ("checkpoint.uri={tmp}/a-file", "checkpoint.uri: {tmp}/a-file is a file, not a directory"),
    ],
)
def test_bare_torchrun_every_worker_exits_2_and_rank_0_says_why(files, override, expected):
    proc = run(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), *FAST, "training.max_steps=3",
                        f"monitoring.run_dir={files / 'runs'}", override.format(tmp=files)), cwd=files, timeout=180)
    assert proc.returncode == 1  # torchrun's own status: see docs/runbook.md
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected.format(tmp=files) in errors[0], proc.stderr[-3000:]
    # torchrun's table: rank 0 exited 2; a peer exits 2 too, or is SIGTERMed by torchrun first if it was slower
    codes = re.findall(r"exitcode  : (-?\d+)", proc.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, proc.stderr[-3000:]
    for noise in ("[rank", "connectFullMesh", "ProcessGroup"):  # no worker traceback, no half-made group
        assert noise not in proc.stderr, proc.stderr[-3000:]
    assert "ddlc: run" not in proc.stdout
