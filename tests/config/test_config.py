import pytest

from ddlc.config import ConfigError, apply_overrides, load_config, parse_override
from tests.support import CONFIG, PYTHON, REPO, TRAIN_PY, run


def test_shipped_config_is_valid():
    cfg = load_config(CONFIG)
    assert cfg.distributed.strategy == "ddp"
    assert cfg.training.max_steps > 0


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg.training.max_steps == 200 and cfg.model.n_embd == 128


def test_dotted_overrides_are_typed():
    cfg = load_config(CONFIG, ["training.max_steps=7", "optimizer.lr=3e-4", "training.precision=bf16",
                               "checkpoint.async_save=false", "optimizer.betas=[0.8, 0.9]"])
    assert cfg.training.max_steps == 7
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.training.precision == "bf16"
    assert cfg.checkpoint.async_save is False
    assert cfg.optimizer.betas == (0.8, 0.9)


def test_overrides_do_not_mutate_input():
    data = {"training": {"max_steps": 5}}
    out = apply_overrides(data, ["training.max_steps=9", "model.n_layer=3"])
    assert data == {"training": {"max_steps": 5}}
    assert out == {"training": {"max_steps": 9}, "model": {"n_layer": 3}}


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1", ".a=1"])
def test_malformed_override(text):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override(text)


def test_epochs_replace_default_steps():
    cfg = load_config(None, ["training.epochs=0.5"])
    assert cfg.training.max_steps is None and cfg.training.epochs == 0.5
    with pytest.raises(ConfigError, match="exactly one of training.max_steps and training.epochs"):
        load_config(None, ["training.epochs=1", "training.max_steps=10"])


@pytest.mark.parametrize(
    "yaml_text, field, message",
    [
        ("training:\n  micro_batch_size: -4\n", "training.micro_batch_size", "greater than 0"),
        ("training:\n  max_steps: lots\n", "training.max_steps", "valid integer"),
        ("trainig:\n  max_steps: 3\n", "trainig", "unknown key"),
        ("training:\n  max_step: 3\n", "training.max_step", "unknown key"),
        ("distributed:\n  strategy: zero\n", "distributed.strategy", "'ddp', 'fsdp', 'deepspeed' or 'horovod'"),
        ("model:\n  n_embd: 100\n  n_head: 3\n", "model", "divisible"),
        ("monitoring:\n  run_name: ../escape\n", "monitoring.run_name", "pattern"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, yaml_text, field, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {field}"), text
    assert message in text


def test_override_error_says_it_came_from_the_command_line():
    with pytest.raises(ConfigError, match=r"\(command-line override\): training.micro_batch_size"):
        load_config(CONFIG, ["training.micro_batch_size=0"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml \(line \d+\): invalid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config", "missing.yaml"], "config file not found: missing.yaml"),
        (["--config", str(CONFIG), "training.micro_batch_size=-1"], "training.micro_batch_size"),
        (["--config", str(CONFIG), "bogus"], "unexpected argument 'bogus'"),
    ],
)
def test_train_py_bad_input_exits_2_without_traceback(tmp_path, args, expected):
    proc = run([PYTHON, str(TRAIN_PY), *args], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1
