"""ddlc.config.loader at its edges, in-process: the exact one-line messages (which field, which file, whether it
came from the command line), the size bounds at their limits, overrides that build or replace sections, and the
once-per-process note that only rank 0 prints. Fast on purpose: `make mutate` reruns these for each mutant."""

from __future__ import annotations

import pytest
import yaml

from ddlc.config import loader
from ddlc.config.loader import (MAX_CONFIG_BYTES, ConfigError, apply_overrides, check_size, dump_config, load_config,
                                parse_override, read_yaml, validate)


def _error(*overrides: str, path=None) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(path, overrides)
    return str(raised.value)


def test_validation_messages_name_the_field_and_the_override():
    assert _error("bogus.x=1") == "<defaults> (command-line override): bogus: unknown key"
    assert _error("training.max_steps=abc") == ("<defaults> (command-line override): training.max_steps: "
                                                "Input should be a valid integer (got 'abc')")
    assert _error("training.max_steps=-1", "optimizer.lr=abc").endswith("(got 'abc') [+1 more]")
    assert _error("optimizer.lr=.nan") == ("<defaults> (command-line override): optimizer.lr: Input should be a "
                                           "finite number (got nan)")  # pydantic's "Value error, " prefix dropped
    assert _error("training.max_steps=1=2").startswith("<defaults> (command-line override): training.max_steps:")
    # a section's own check names its field itself: said once, and without the section's values
    assert _error("data.source=text") == ("<defaults> (command-line override): data.path is required when "
                                          "data.source is 'text'")
    assert _error("model=3") == ("<defaults> (command-line override): model: Input should be a valid dictionary "
                                 "or instance of ModelConfig (got 3)")


def test_the_override_is_blamed_only_for_its_own_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  max_steps: abc\n")
    assert _error(path=path).startswith(f"{path}: training.max_steps: Input should be")  # from the file
    assert _error("optimizer.lr=0.1", path=path).startswith(f"{path}: training.max_steps:")  # another key
    assert _error("training=", path=path).startswith(f"{path} (command-line override): training:")
    # a section set on the command line owns its fields; a field set owns its section's error
    with pytest.raises(ConfigError, match=r"^f\.yaml \(command-line override\): training\.max_steps: "):
        validate({"training": {"max_steps": "x"}}, "f.yaml", ["training={}"])
    with pytest.raises(ConfigError, match=r"^f\.yaml \(command-line override\): training: "):
        validate({"training": 3}, "f.yaml", [" training.max_steps =3"])
    with pytest.raises(ConfigError, match=r"^f\.yaml: training\.max_steps: "):
        validate({"training": {"max_steps": "x"}}, "f.yaml", ["training_x.max_steps=3", "trainin=1"])
    with pytest.raises(ConfigError, match=r"^f\.yaml: <root>: Input should be a valid dictionary"):
        validate([], "f.yaml")


def test_a_long_bad_value_is_shortened_at_80_characters():
    shown = _error("training.max_steps=" + "9" * 80)
    assert shown.endswith("(got " + "9" * 80 + ")")
    cut = _error("training.max_steps=" + "9" * 81)
    assert cut.endswith("(got " + "9" * 60 + "... (81 characters))")


def test_parse_override_forms():
    assert parse_override(" training.max_steps = 7") == (["training", "max_steps"], 7)
    assert parse_override("a.b=") == (["a", "b"], None)
    assert parse_override("a.b=   ") == (["a", "b"], None)
    assert parse_override("a=x=y") == (["a"], "x=y")
    assert parse_override("a=[") == (["a"], "[")  # not YAML: the literal string, validation names the key
    assert parse_override("a=" + "1" * 5000) == (["a"], "1" * 5000)
    bomb = "a.b=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], " \
           "[*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]]"
    with pytest.raises(ConfigError, match=r"^override 'a\.b': expands to more than 10,000 values"):
        parse_override(bomb)
    for bad in ("a", "=1", " =1", "a..b=1", ".a=1", "a.=1"):
        with pytest.raises(ConfigError, match=rf"^override '{bad}': expected dotted\.key=value, e\.g\. "
                                              r"training\.max_steps=200$"):
            parse_override(bad)


def test_apply_overrides_builds_and_replaces_sections_in_a_copy():
    data = {"training": {"max_steps": 1}, "model": 3, "tags": [1, [2]]}
    result = apply_overrides(data, ["training.lr=2", "model.n_layer=4", "new.deep.key=x"])
    assert result == {"training": {"max_steps": 1, "lr": 2}, "model": {"n_layer": 4}, "tags": [1, [2]],
                      "new": {"deep": {"key": "x"}}}
    result["tags"][1].append(3)
    assert data == {"training": {"max_steps": 1}, "model": 3, "tags": [1, [2]]}


def test_check_size_counts_every_value_and_stops_at_the_limit():
    assert check_size(5, "s") == 1
    assert check_size({"a": [1, 2]}, "s") == 5  # the dict, its key, the list, two items
    shared = [1, 2, 3]
    assert check_size({"x": shared, "y": shared}, "s") == 1 + 2 + 4 + 4  # an alias counts each time it is used
    assert check_size(list(range(9)), "s", limit=10) == 10
    with pytest.raises(ConfigError, match=r"^s: expands to more than 10 values \(YAML aliases\?\); a config is "
                                          r"far smaller$"):
        check_size(list(range(10)), "s", limit=10)
    loop: list = []
    loop.append(loop)
    with pytest.raises(ConfigError, match=r"^s: a YAML alias refers to itself \(recursive structure\)$"):
        check_size(loop, "s")
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ConfigError, match=r"^s: nested too deeply$"):
        check_size(deep, "s", limit=10**9)


def test_read_yaml_bounds_and_messages(tmp_path):
    path = tmp_path / "c.yaml"
    body = b"training:\n  max_steps: 3\n"
    path.write_bytes(body + b"#" * (MAX_CONFIG_BYTES - len(body)))
    assert read_yaml(path) == {"training": {"max_steps": 3}}
    path.write_bytes(body + b"#" * (MAX_CONFIG_BYTES - len(body) + 1))
    with pytest.raises(ConfigError, match=rf"^{path}: larger than 1,048,576 bytes, not a config file$"):
        read_yaml(path)
    path.write_text("a: 1\n b: 2\n")
    with pytest.raises(ConfigError, match=rf"^{path} \(line 2\): invalid YAML: mapping values are not allowed here$"):
        read_yaml(path)
    path.write_bytes(b"a: \x07\n")  # a control character: PyYAML's reader error has no line mark and two lines
    with pytest.raises(ConfigError, match=rf"^{path}: invalid YAML: unacceptable character #x0007: special "
                                          r"characters are not allowed in \"<unicode string>\", position 3$"):
        read_yaml(path)
    path.write_text("- 1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: top level must be a mapping of sections, got list$"):
        read_yaml(path)
    path.write_bytes(b"a: \xff\n")
    with pytest.raises(ConfigError, match=rf"^{path}: cannot read config: 'utf-8' codec can't decode byte 0xff"):
        read_yaml(path)
    with pytest.raises(ConfigError, match=rf"^config path is a directory, not a file: {tmp_path}$"):
        read_yaml(tmp_path)
    with pytest.raises(ConfigError, match=rf"^config file not found: {tmp_path / 'none.yaml'}$"):
        read_yaml(str(tmp_path / "none.yaml"))


def test_dump_config_reads_back_to_the_same_config(tmp_path):
    config = load_config(None, ["training.max_steps=7", "optimizer.lr=0.5"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config
    # in the schema's order (model, data, training, ...), like config.yaml, not sorted
    assert list(yaml.safe_load(dump_config(config))) == list(type(config).model_fields)
    assert list(type(config).model_fields) != sorted(type(config).model_fields)


@pytest.mark.parametrize("env, printed", [
    ({}, True), ({"RANK": "0"}, True), ({"RANK": "1"}, False), ({"HOROVOD_RANK": "2"}, False),
    ({"SLURM_PROCID": "3"}, False), ({"RANK": "0", "SLURM_PROCID": "1"}, True),  # the first variable set decides
    ({"OMPI_COMM_WORLD_RANK": "0", "SLURM_PROCID": "1"}, True),
])
def test_note_is_printed_once_and_only_by_rank_0(monkeypatch, capsys, env, printed):
    for name in ("RANK", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(loader, "_NOTED", set())
    loader.note("hello")
    loader.note("hello")
    assert capsys.readouterr().err == ("note: hello\n" if printed else "")
