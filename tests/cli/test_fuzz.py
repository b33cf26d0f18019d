"""CLI fuzz: every bad argument of every subcommand ends in exactly one line on stderr, exit code 2, no traceback.

Usage-level cases are generated from the command tree itself (so a new subcommand or option is covered without
editing this file): an unknown option, a value-taking option given no value, a number option given a word or a
100 KB string, an out-of-range number, a surplus positional argument, a missing required argument. They run
in-process through the console script's entry (`ddlc.cli.main.run`). Semantic cases (files
that are not what they should be, values that only fail when used) run the real `python -m ddlc`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main

from ddlc.cli import main
from ddlc.cli.main import app
from tests.support import PYTHON, REPO, run

HUGE = "9" * 100_000


def _leaves(command, path: list[str]):
    subs = getattr(command, "commands", None)
    if subs:
        if getattr(command, "invoke_without_command", False):
            yield path, command
        for name, sub in sorted(subs.items()):
            yield from _leaves(sub, path + [name])
    else:
        yield path, command


def _required(command) -> list[str]:
    """Arguments that get the command past its required parameters without running anything heavy."""
    args: list[str] = []
    for param in command.params:
        if not getattr(param, "required", False):
            continue
        if param.param_type_name == "argument":
            args.append("x")
        else:
            args += [param.opts[0], "1"]
    return args


def _usage_cases() -> list[tuple[str, list[str]]]:
    root = typer.main.get_command(app)
    cases: list[tuple[str, list[str]]] = [("unknown command", ["no-such-command"])]
    for path, command in _leaves(root, []):
        name = " ".join(path)
        is_group = bool(getattr(command, "commands", None))
        base = _required(command)
        cases.append((f"{name}: unknown option", path + base + ["--no-such-option"]))
        if is_group:
            cases.append((f"{name}: unknown subcommand", path + ["no-such-subcommand"]))
        options = [p for p in command.params if p.param_type_name == "option" and not p.is_flag]
        for option in options:
            flag = option.opts[0]
            cases.append((f"{name} {flag}: no value", path + base + [flag]))
            kind = getattr(option.bare_type if hasattr(option, "bare_type") else None, "__name__", "")
            if kind in ("int", "float"):
                for value in ("abc", HUGE + "x", "1e999x"):
                    cases.append((f"{name} {flag}={value[:8]}", path + base + [flag, value]))
            if getattr(option, "min", None) is not None:
                cases.append((f"{name} {flag} below its minimum", path + base + [flag, str(option.min - 1)]))
        positional = [p for p in command.params if p.param_type_name == "argument"]
        if not positional and not is_group:
            cases.append((f"{name}: surplus argument", path + base + ["surplus"]))
        missing = [p for p in positional if p.required]
        if missing:
            cases.append((f"{name}: missing argument", path))
    return cases


USAGE_CASES = _usage_cases()


def test_the_generated_cases_cover_every_subcommand():
    root = typer.main.get_command(app)
    leaves = {" ".join(path) for path, _ in _leaves(root, [])}
    covered = {label.split(":")[0].split(" --")[0].split(" -o")[0] for label, _ in USAGE_CASES}
    assert leaves <= covered, leaves - covered
    assert len(USAGE_CASES) > 100


@pytest.mark.parametrize("label,argv", USAGE_CASES, ids=[label for label, _ in USAGE_CASES])
def test_bad_arguments_are_one_line_and_exit_2(label, argv, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["ddlc", *argv])
    with pytest.raises(SystemExit) as leaving:
        main.run()
    out, err = capsys.readouterr()
    assert leaving.value.code == 2, (label, err[-500:])
    assert out == "" and err.count("\n") == 1 and err.startswith("error: "), (label, err[:2000])
    assert len(err) <= 1020 and "Traceback" not in err and "Usage:" not in err


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_semantic_bad_input_is_one_line_through_the_console_entry(tmp_path):
    binary = _write(tmp_path / "binary", bytes(range(256)) * 4)
    runs = tmp_path / "runs"
    runs.mkdir()
    a_file = _write(tmp_path / "file", b"x")
    digits = _write(tmp_path / "digits.yaml", b"prices:\n  p4d.24xlarge: " + b"9" * 5000 + b"\n")
    report = ["report", "utilization", "--runs-dir", str(runs)]
    cases = [
        (report + ["--since", "9" * 400 + "d"], "--since"),
        (report + ["--since", "1e9w"], "--since"),
        (report + ["--price-table", str(binary)], "price table"),
        (report + ["--price-table", str(tmp_path)], "price table"),
        (report + ["--price-table", str(digits)], "price table"),
        (report + ["-o", str(a_file / "sub" / "r.md")], "-o: cannot write"),
        (report + ["-o", str(tmp_path / "r.pdf")], "-o/--output:"),
        (["dashboard", "--runs-dir", str(runs), "--price-table", str(binary), "--port", "0"], "price table"),
        (["dashboard", "export", "--grafana", str(a_file)], "--grafana"),
        (["train", "--dry-run", "training.max_steps=" + "9" * 5000], "training.max_steps"),
        (["train", "--dry-run", "--nproc", HUGE], "--nproc"),
    ]
    for argv, needle in cases:
        result = run([PYTHON, "-m", "ddlc", *argv], cwd=tmp_path, timeout=120)
        shown = " ".join(a[:40] for a in argv)
        assert result.returncode == 2, (shown, result.stderr[-1500:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (shown, result.stderr[-1500:])
        assert len(lines[0]) <= 1020 and "Traceback" not in result.stderr
    assert REPO.is_dir()


def test_a_long_message_keeps_its_remedy_and_a_huge_one_is_cut():
    """A real message with two long paths (a checkpoint location on a deep mount) is printed whole, its advice at
    the end included; a 100 KB one is one bounded line."""
    from ddlc.cli.errors import MAX_MESSAGE, one_line

    real = f"checkpoint location /{'deep/' * 60}ckpt is not shared by all nodes; use s3://bucket/prefix or /fsx/"
    assert one_line(real) == real and len(real) > 300
    assert len(one_line(HUGE)) == MAX_MESSAGE and one_line(HUGE).endswith("…")
