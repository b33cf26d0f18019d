"""ddlc.dashboards.metrics_file reads metrics.jsonl 4 MB at a time and validates it in blocks of whole lines
(~256 KB), each in one pydantic-core call, then turns them into columns. These tests pin what the fast paths must
not change, on generated files (no training run needed): the columns equal a line-by-line reading whatever the
block boundaries and line shapes; a bad line anywhere, in any block, makes its run unreadable with that line's
number, including bytes that are not UTF-8 (which pydantic-core rejects before the reader's own UTF-8 check
runs); and every other run still reads.
"""

from __future__ import annotations

import json
import math
import random
from array import array

import pytest

from ddlc.dashboards import metrics_file as metrics_module
from ddlc.dashboards.metrics_file import MAX_COLUMNS, _append_any, _append_uniform
from ddlc.dashboards.runs import RunStore
from ddlc.run_format import STEP_RECORDS, metric_value

T0 = 1.7e9


def _line(step: int, **extra) -> str:
    return json.dumps({"step": step, "time": T0 + step, "loss": 1.0 / step, "lr": 1e-3, **extra})


def _reference(lines: list[str]) -> dict[str, list[float]]:
    """Columns as a reader without any fast path builds them: one line at a time, NaN where a line lacks a key."""
    records = [json.loads(line) for line in lines if line.strip()]
    keys = list(dict.fromkeys(key for record in records for key in record))[:MAX_COLUMNS]
    return {key: [record["step"] if key == "step" else metric_value(record.get(key, math.nan))
                  for record in records] for key in keys}


def _plain(values) -> list:
    return ["nan" if isinstance(v, float) and math.isnan(v) else v for v in values]  # NaN != NaN


def _same(columns: dict[str, array], expected: dict[str, list[float]]) -> None:
    assert list(columns) == list(expected)  # the same keys in the same (first-seen) order
    assert {k: _plain(v) for k, v in columns.items()} == {k: _plain(v) for k, v in expected.items()}


def _shapes(count: int) -> list[str]:
    """Lines of every shape the reader meets: the trainer's (val_loss on some steps), non-finite strings and nulls,
    a library user's own keys (appearing late, numbers past a double's range), blank lines."""
    lines = []
    for step in range(1, count + 1):
        extra = {}
        if step % 50 == 0:
            extra["val_loss"] = 2.0 / step
        if 200 <= step < 260:
            extra["loss"] = ["nan", "inf", "-inf", None][step % 4]
        if step >= 400:
            extra["accuracy"] = step / count
        if step == 610:
            extra["huge"] = 10 ** 400  # JSON allows it; a float cannot hold it: inf
        lines.append(_line(step, **extra))
        if step == 333:
            lines.append("")
    return lines


@pytest.mark.parametrize("chunk,parse", [(64 << 10, 256 << 10), (64 << 10, 2048), (2048, 600), (600, 600), (600, 50)])
def test_columns_equal_a_line_by_line_reading_whatever_the_blocks(tmp_path, monkeypatch, chunk, parse):
    monkeypatch.setattr(metrics_module, "CHUNK_BYTES", chunk)  # many blocks: keys appear and vanish between them
    monkeypatch.setattr(metrics_module, "PARSE_BYTES", parse)  # 50: every line longer than a parse block
    run = tmp_path / "run"
    run.mkdir()
    lines = _shapes(700)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    record = RunStore(tmp_path).load(run)
    assert record.readable, record.error
    _same(record.columns, _reference(lines))


def test_an_appended_block_with_new_or_missing_keys_keeps_columns_aligned(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    metrics = run / "metrics.jsonl"
    store = RunStore(tmp_path)
    written: list[str] = []
    for block in ([_line(s) for s in range(1, 4)], [_line(s, val_loss=0.5) for s in range(4, 6)],
                  [_line(s) for s in range(6, 9)], [_line(s, mine=7) for s in range(9, 11)]):
        with metrics.open("a") as handle:
            handle.write("\n".join(block) + "\n")
        written += block
        record = store.load(run)
        assert record.readable, record.error
        _same(record.columns, _reference(written))


def test_a_line_longer_than_a_parse_block_is_read_whole(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [_line(1), _line(2, note="x" * (metrics_module.PARSE_BYTES + 1000)), _line(3)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    record = RunStore(tmp_path).load(run)
    assert record.readable and list(record.columns["step"]) == [1, 2, 3], record.error


def test_at_most_max_columns_whatever_the_path(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    wide = [_line(s, **{f"k{i}": i for i in range(MAX_COLUMNS + 10)}) for s in range(1, 4)]
    (run / "metrics.jsonl").write_text("\n".join(wide) + "\n")
    record = RunStore(tmp_path).load(run)
    assert record.readable and len(record.columns) == MAX_COLUMNS
    _same(record.columns, _reference(wide))


def test_the_uniform_path_builds_what_the_general_one_does():
    """Random blocks of records: whenever _append_uniform takes a block, the columns equal _append_any's."""
    rng = random.Random(7)
    values = [1.5, 0, 3, -2.0, "nan", "inf", "-inf", None, True, 10 ** 400, 2 ** 70]
    taken = 0
    for _ in range(400):
        keys = ["step", "time", "loss"] + rng.sample(["lr", "val_loss", "mine", "flag"], rng.randint(0, 4))
        uniform = rng.random() < 0.7
        records = []
        for step in range(rng.randint(1, 6)):
            chosen = keys if uniform else [k for k in keys if k in ("step", "time", "loss") or rng.random() < 0.5]
            records.append({k: step if k == "step" else rng.choice(values) for k in chosen})
        start = rng.choice([{}, {"step": array("q", [0]), "loss": array("d", [1.0])},
                            {"step": array("q", [0]), "lr": array("d", [1.0]), "time": array("d", [1.0])}])
        fast = {k: array(v.typecode, v) for k, v in start.items()}
        slow = {k: array(v.typecode, v) for k, v in start.items()}
        if _append_uniform(fast, records):
            taken += 1
            _append_any(slow, records)
            _same(fast, {k: list(v) for k, v in slow.items()})
        else:
            assert {k: list(v) for k, v in fast.items()} == {k: list(v) for k, v in start.items()}  # untouched
    assert taken > 100


BAD_LINES = {
    "loss-string": (b'{"step": 1, "time": 1.0, "loss": "low"}', "loss"),
    "syntax": (b'{"step": 1, "time": 1.0, "loss": 1.0', "not valid JSON"),
    "scalar": (b"42", ""),
    "invalid-byte-in-value": (b'{"step": 1, "time": 1.0, "loss": 1.0, "note": "\xff"}', "not UTF-8 text"),
    "invalid-byte-in-key": (b'{"step": 1, "time": 1.0, "loss": 1.0, "\xc3": 1}', "not UTF-8 text"),
    "encoded-surrogate": (b'{"step": 1, "time": 1.0, "loss": 1.0, "note": "\xed\xa0\x80"}', "not UTF-8 text"),
    "overlong": (b'{"step": 1, "time": 1.0, "loss": 1.0, "note": "\xc0\xaf"}', "not UTF-8 text"),
    "cut-sequence": (b'{"step": 1, "time": 1.0, "loss": 1.0, "note": "a\xe2\x82"}', "not UTF-8 text"),
    "past-u10ffff": (b'{"step": 1, "time": 1.0, "loss": 1.0, "note": "\xf4\x90\x80\x80"}', "not UTF-8 text"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
@pytest.mark.parametrize("at", [1, 777, 1500])
def test_a_bad_line_in_any_block_names_its_line_and_only_its_run(tmp_path, monkeypatch, kind, at):
    monkeypatch.setattr(metrics_module, "CHUNK_BYTES", 16 << 10)  # ~230 lines a read: line 777 is in the 4th
    monkeypatch.setattr(metrics_module, "PARSE_BYTES", 4 << 10)  # validated ~60 lines at a time
    bad, reason = BAD_LINES[kind]
    lines = [_line(s).encode() for s in range(1, 1501)]
    lines[at - 1] = bad
    for name in ("a-good", "bad", "z-good"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_bytes(b"\n".join(lines if name == "bad" else lines[:at - 1]) + b"\n")
    runs = {r.name: r for r in RunStore(tmp_path).runs()}
    assert runs["a-good"].readable and runs["z-good"].readable and runs["a-good"].num_steps == at - 1
    assert runs["bad"].error.startswith(f"metrics.jsonl line {at}: {reason}"), runs["bad"].error


def test_pydantic_core_rejects_every_block_that_is_not_utf8():
    """The reader checks UTF-8 only after a block failed validation: it relies on pydantic-core rejecting any
    non-UTF-8 byte. Every non-UTF-8 byte sequence of up to 2 bytes, inside a string value, proves it here."""
    good = b'[{"step": 1, "time": 1.0, "loss": 1.0, "note": "%s"}]'
    rejected = 0
    for first in range(0x80, 0x100):
        for tail in [b""] + [bytes([second]) for second in range(0x20, 0x100) if second not in (0x22, 0x5C)]:
            raw = bytes([first]) + tail
            try:
                raw.decode("utf-8")
                continue  # valid text: not the question here
            except UnicodeDecodeError:
                pass
            with pytest.raises(ValueError):
                STEP_RECORDS.validate_json(good % raw)
            rejected += 1
    assert rejected > 20_000
