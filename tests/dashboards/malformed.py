"""A corpus of malformed run directories, generated from one good run: each kind breaks one file in one way.

    make_corpus(good_run_dir, root) -> {run name: file it breaks}   (root also holds `good`, a plain copy)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

GOOD = "good"


def _lines(run: Path) -> list[str]:
    return (run / "metrics.jsonl").read_text().splitlines()


def _set_line(index: int, text: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        lines = _lines(run)
        lines[index] = text
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return apply


def _edit_record(index: int, **changes) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        lines = _lines(run)
        record = json.loads(lines[index])
        for key, value in changes.items():
            if value is _DROP:
                record.pop(key)
            else:
                record[key] = value
        lines[index] = json.dumps(record)
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return apply


_DROP = object()


def _raw_metrics_line(index: int, raw: bytes) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        lines = (run / "metrics.jsonl").read_bytes().split(b"\n")
        lines[index] = raw
        (run / "metrics.jsonl").write_bytes(b"\n".join(lines))
    return apply


def _replace_with_dir(name: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / name).unlink()
        (run / name).mkdir()
        (run / name / "inside").write_text("x")
    return apply


def _replace_with_fifo(name: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / name).unlink()
        os.mkfifo(run / name)  # a naive reader blocks here forever
    return apply


def _dangling_link(name: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / name).unlink()
        (run / name).symlink_to(run / "nowhere")
    return apply


def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        path = run / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return apply


def _summary(**changes) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        summary = json.loads((run / "summary.json").read_text())
        summary.update(changes)
        (run / "summary.json").write_text(json.dumps(summary))
    return apply


def _config_text(transform: Callable[[str], str]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        path = run / "config.yaml"
        path.write_text(transform(path.read_text()))
    return apply


# name -> (file it breaks, how)
KINDS: dict[str, tuple[str, Callable[[Path], None]]] = {
    # metrics.jsonl
    "m-loss-string": ("metrics.jsonl", _edit_record(3, loss="low")),
    "m-loss-bool": ("metrics.jsonl", _edit_record(3, loss=True)),
    "m-loss-object": ("metrics.jsonl", _edit_record(3, loss={"value": 1})),
    "m-step-string": ("metrics.jsonl", _edit_record(3, step="4")),
    "m-step-float": ("metrics.jsonl", _edit_record(3, step=4.5)),
    "m-step-negative": ("metrics.jsonl", _edit_record(3, step=-4)),
    "m-step-huge": ("metrics.jsonl", _edit_record(3, step=10**30)),
    "m-no-time": ("metrics.jsonl", _edit_record(3, time=_DROP)),
    "m-no-step": ("metrics.jsonl", _edit_record(3, step=_DROP)),
    "m-time-string": ("metrics.jsonl", _edit_record(3, time="yesterday")),
    "m-time-far-future": ("metrics.jsonl", _edit_record(3, time=1e300)),
    "m-time-inf": ("metrics.jsonl", _set_line(3, '{"step": 4, "time": 1e400, "loss": 1.0}')),
    "m-time-nan": ("metrics.jsonl", _set_line(3, '{"step": 4, "time": NaN, "loss": 1.0}')),
    # a finite step time longer than the time since 1970: the run's start (time - step_time_s) is no date
    "m-step-time-1e10": ("metrics.jsonl", _edit_record(0, step_time_s=1e10)),
    "m-step-time-1e12": ("metrics.jsonl", _edit_record(0, step_time_s=1e12)),
    "m-step-time-1e300": ("metrics.jsonl", _edit_record(0, step_time_s=1e300)),
    "m-number-5000-digits": ("metrics.jsonl", _set_line(3, '{"step": 4, "time": 1.0, "loss": ' + "9" * 5000 + "}")),
    "m-scalar-line": ("metrics.jsonl", _set_line(3, "42")),
    "m-string-line": ("metrics.jsonl", _set_line(3, '"step"')),
    "m-null-line": ("metrics.jsonl", _set_line(3, "null")),
    "m-array-line": ("metrics.jsonl", _set_line(3, "[1, 2, 3]")),
    "m-truncated-middle-line": ("metrics.jsonl", _set_line(3, '{"step": 4, "loss": 1.2, "ti')),
    "m-two-records-on-one-line": ("metrics.jsonl", _set_line(3, '{"step": 4, "lo{"step": 5, "time": 1.0, "loss": 1}')),
    "m-not-utf8": ("metrics.jsonl", _raw_metrics_line(3, b'{"step": 4, "time": 1.0, "loss": 1, "note": "\xff\xfe"}')),
    "m-binary-garbage": ("metrics.jsonl", _write("metrics.jsonl", bytes(range(256)) * 64 + b"\n")),
    "m-deep-nesting": ("metrics.jsonl", _set_line(3, "[" * 100_000 + "]" * 100_000)),
    "m-directory": ("metrics.jsonl", _replace_with_dir("metrics.jsonl")),
    "m-fifo": ("metrics.jsonl", _replace_with_fifo("metrics.jsonl")),
    "m-dangling-link": ("metrics.jsonl", _dangling_link("metrics.jsonl")),
    # summary.json
    "s-list": ("summary.json", _write("summary.json", "[1, 2]")),
    "s-string": ("summary.json", _write("summary.json", '"done"')),
    "s-number": ("summary.json", _write("summary.json", "3")),
    "s-empty": ("summary.json", _write("summary.json", "")),
    "s-truncated": ("summary.json", _write("summary.json", '{"run_name": "x", "steps": 2')),
    "s-not-utf8": ("summary.json", _write("summary.json", b'{"run_name": "\xff"}')),
    "s-nodes-string": ("summary.json", _summary(num_nodes="four")),
    "s-nodes-huge": ("summary.json", _summary(num_nodes=10**30)),
    "s-gpus-negative": ("summary.json", _summary(gpus=-1)),
    "s-instance-type-list": ("summary.json", _summary(instance_type=["p4d"])),
    "s-missing-fields": ("summary.json", _write("summary.json", '{"node": "n1"}')),
    "s-too-large": ("summary.json", _summary(extra={"padding": "x" * (2 << 20)})),
    "s-directory": ("summary.json", _replace_with_dir("summary.json")),
    # config.yaml
    "c-list": ("config.yaml", _write("config.yaml", "- 1\n- 2\n")),
    "c-scalar": ("config.yaml", _write("config.yaml", "just words\n")),
    "c-max-steps-string": ("config.yaml", _config_text(lambda t: t.replace("max_steps: 20", "max_steps: many"))),
    "c-max-steps-5000-digits": ("config.yaml", _config_text(lambda t: t.replace("max_steps: 20", "max_steps: " + "9" * 5000))),
    "c-unknown-key": ("config.yaml", _config_text(lambda t: t + "trainng:\n  max_steps: 3\n")),
    "c-invalid-yaml": ("config.yaml", _write("config.yaml", "training: {max_steps: [\n")),
    "c-not-utf8": ("config.yaml", _write("config.yaml", b"training:\n  max_steps: \xff\xfe\n")),
    "c-billion-laughs": ("config.yaml", _write("config.yaml", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9)))),
    "c-directory": ("config.yaml", _replace_with_dir("config.yaml")),
}


def make_corpus(good_run: Path, root: Path) -> dict[str, str]:
    """Copies of `good_run` under `root`: `good` unchanged, one per KINDS entry with its file broken."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(good_run, root / GOOD, ignore=shutil.ignore_patterns("checkpoints"))
    for name, (_, breaker) in KINDS.items():
        target = root / name
        shutil.copytree(good_run, target, ignore=shutil.ignore_patterns("checkpoints"))
        breaker(target)
    return {name: file for name, (file, _) in KINDS.items()}
