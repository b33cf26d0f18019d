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


def test_an_empty_override_is_null():
    """`key=` sets null: where null means something (grad_clip: no clipping; checkpoint.uri: the default place) it
    is taken, and it replaces the file's value; elsewhere validation names the key."""
    cfg = load_config(CONFIG, ["training.grad_clip=", "checkpoint.uri= "])
    assert cfg.training.grad_clip is None and cfg.checkpoint.uri is None
    assert load_config(CONFIG, []).training.grad_clip == 1.0  # config.yaml's own value, replaced above
    with pytest.raises(ConfigError, match=r"model\.n_layer: Input should be a valid integer \(got None\)"):
        load_config(CONFIG, ["model.n_layer="])


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


# -- strict types, finite numbers, bounds (issue #12: each was accepted or hung before) ---------------------------
@pytest.mark.parametrize(
    "override, field, message",
    [
        ("training.max_steps=true", "training.max_steps", "valid integer (got True)"),
        ("training.max_steps=1e23", "training.max_steps", "valid integer (got '1e23')"),
        ("training.max_steps=1.0e+23", "training.max_steps", "valid integer"),
        ("training.max_steps=100000000000000000000000", "training.max_steps", "less than or equal to 1000000000"),
        ("training.micro_batch_size=2.5", "training.micro_batch_size", "valid integer"),
        ("training.micro_batch_size=8.0", "training.micro_batch_size", "valid integer"),
        ("model.n_layer=yes", "model.n_layer", "valid integer (got True)"),
        ("checkpoint.interval_steps=false", "checkpoint.interval_steps", "valid integer (got False)"),
        ("optimizer.lr=.inf", "optimizer.lr", "finite number"),
        ("optimizer.lr=.nan", "optimizer.lr", ""),
        ("optimizer.lr=inf", "optimizer.lr", "finite number"),
        ("optimizer.lr=true", "optimizer.lr", "not a boolean"),
        ("optimizer.lr=1e31", "optimizer.lr", "less than or equal to 1000000000000000000000000000000"),
        ("optimizer.eps=-.inf", "optimizer.eps", ""),
        ("optimizer.weight_decay=.inf", "optimizer.weight_decay", "finite number"),
        ("training.grad_clip=.inf", "training.grad_clip", "finite number"),
        ("training.epochs=.inf", "training.epochs", "finite number"),
        ("checkpoint.rpo_seconds=.nan", "checkpoint.rpo_seconds", ""),
        ("optimizer.betas=[0.9, 1.0]", "optimizer.betas.1", "less than 1"),
        ("optimizer.betas=[-0.1, 0.9]", "optimizer.betas.0", "greater than or equal to 0"),
        ("optimizer.betas=[0.9]", "optimizer.betas.1", "Field required"),
        ("checkpoint.async_save=1", "checkpoint.async_save", "valid boolean"),
        ("distributed.timeout_s=1e20", "distributed.timeout_s", "valid integer"),
        ("distributed.timeout_s=100000000000", "distributed.timeout_s", "less than or equal to"),
        ("distributed.deepspeed.zero_stage=true", "distributed.deepspeed.zero_stage", "not a boolean"),
        ("training.max_nonfinite_steps=0", "training.max_nonfinite_steps", "greater than 0"),
    ],
)
def test_numbers_are_strict_finite_and_bounded(override, field, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    text = str(info.value)
    assert text.startswith(f"<defaults> (command-line override): {field}:"), text
    assert message in text


def test_yaml_floats_without_a_dot_still_read_as_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  lr: 3e-4\n  eps: 1e-8\ntraining:\n  max_steps: 10\n  epochs: null\n")
    cfg = load_config(path)
    assert cfg.optimizer.lr == pytest.approx(3e-4) and cfg.training.max_steps == 10


def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ntraining: {{max_steps: *a{levels - 1}}}\n"


def test_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(12))  # 9**12 ~ 2.8e11 values once expanded
    with pytest.raises(ConfigError, match=r"bomb.yaml: expands to more than 10,000 values \(YAML aliases\?\)"):
        load_config(path)
    path.write_text("model: &m [*m]\n")
    with pytest.raises(ConfigError, match="refers to itself"):
        load_config(path)
    path.write_text("model: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)


def test_aliases_of_normal_size_still_work(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("x-shared: &shared {n_layer: 1, n_embd: 64}\n".replace("x-shared", "model")
                    + "training: {max_steps: &steps 12, stop_at_step: *steps}\n")
    cfg = load_config(path)
    assert cfg.model.n_layer == 1 and cfg.training.stop_at_step == 12


def test_empty_config_says_it_uses_the_defaults(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    for number, text in enumerate(("", "# only a comment\n", "{}\n")):
        path = tmp_path / f"empty{number}.yaml"
        path.write_text(text)
        cfg = load_config(path)
        assert cfg == load_config(None)
        err = capsys.readouterr().err
        assert err == f"note: {path} is empty: training with the built-in defaults (see docs/configuration.md)\n"
    monkeypatch.setenv("RANK", "1")  # workers other than rank 0 stay quiet
    (tmp_path / "quiet.yaml").write_text("")
    load_config(tmp_path / "quiet.yaml")
    assert capsys.readouterr().err == ""


def test_config_files_that_are_not_configs(tmp_path):
    with pytest.raises(ConfigError, match="/dev/zero: larger than 1,048,576 bytes, not a config file"):
        load_config("/dev/zero")  # read in bounded chunks: this used to read forever
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\xd0\xff" * 10)
    with pytest.raises(ConfigError, match="binary.yaml: cannot read config: 'utf-8' codec can't decode"):
        load_config(binary)
