"""docs/dashboards.md, `ddlc report`'s column cache (ddlc.dashboards.column_cache): a second report reuses the
metrics.jsonl columns of the first, but only for the very same bytes. Never stale: a file rewritten with the same
size and modification time, replaced, truncated or appended to is read (the appended part validated) as if
there were no cache. Never unvalidated: a bad line anywhere still makes the run unreadable with its line number,
and a torn, edited or forged cache entry is ignored, not trusted. A cache that cannot be written costs nothing
but time."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ddlc.dashboards import metrics_file as metrics_module
from ddlc.dashboards.column_cache import ColumnCache, default_dir
from ddlc.dashboards.runs import RunStore
from tests.support import PYTHON, REPO, run

T0 = 1.7e9


def _lines(first: int, last: int, loss: float = 1.0) -> str:
    return "".join(json.dumps({"step": s, "time": T0 + s, "loss": loss / s, "lr": 1e-3}) + "\n"
                   for s in range(first, last + 1))


@pytest.fixture
def parsed(monkeypatch) -> list[int]:
    """Bytes of metrics.jsonl parsed (validated) per block, by any reader."""
    blocks: list[int] = []
    original = metrics_module.MetricsFile._parse
    monkeypatch.setattr(metrics_module.MetricsFile, "_parse",
                        lambda self, name, block: (blocks.append(len(block)), original(self, name, block))[1])
    return blocks


def _read(root: Path, cache_dir: Path, name: str = "run"):
    return RunStore(root, cache=ColumnCache(cache_dir, min_bytes=0)).load(root / name)


def _columns(record) -> dict:
    return {key: list(values) for key, values in record.columns.items()}


@pytest.fixture
def store(tmp_path) -> tuple[Path, Path, Path]:
    root, cache = tmp_path / "runs", tmp_path / "cache"
    (root / "run").mkdir(parents=True)
    metrics = root / "run" / "metrics.jsonl"
    metrics.write_text(_lines(1, 300))
    return root, cache, metrics


def test_a_second_read_uses_the_cache_and_gets_the_same_columns(store, parsed):
    root, cache, metrics = store
    cold = _read(root, cache)
    assert parsed == [metrics.stat().st_size] and len(list(cache.iterdir())) == 1
    warm = _read(root, cache)
    assert parsed == [metrics.stat().st_size]  # nothing validated again
    assert warm.readable and _columns(warm) == _columns(cold) and warm.num_steps == 300
    assert _columns(RunStore(root).load(root / "run")) == _columns(cold)  # what a reader without a cache gets


def test_appended_steps_are_validated_and_added_to_the_cached_ones(store, parsed):
    root, cache, metrics = store
    _read(root, cache)
    with metrics.open("a") as handle:
        handle.write(_lines(301, 320) + '{"step": 321, "ti')  # the trainer is writing step 321
    grown = _read(root, cache)
    assert parsed[1:] == [len(_lines(301, 320))] and grown.num_steps == 320
    assert _columns(grown) == _columns(RunStore(root).load(root / "run"))
    with metrics.open("a") as handle:
        handle.write('me": 5, "loss": "low"}\n')  # the finished line is bad: the run is unreadable, line 321
    assert _read(root, cache).error.startswith("metrics.jsonl line 321: loss")


def test_same_size_and_mtime_but_other_bytes_is_not_served_from_the_cache(store, parsed):
    root, cache, metrics = store
    before = _read(root, cache)
    info = metrics.stat()
    text = metrics.read_bytes()
    with metrics.open("r+b") as handle:  # in place: same inode, same size
        handle.write(text.replace(b'"loss": 1.0,', b'"loss": 2.0,', 1))
    os.utime(metrics, ns=(info.st_atime_ns, info.st_mtime_ns))  # and the same modification time
    assert metrics.stat().st_size == info.st_size and metrics.stat().st_mtime_ns == info.st_mtime_ns
    after = _read(root, cache)
    assert after.columns["loss"][0] == 2.0 and before.columns["loss"][0] == 1.0


def test_a_bad_line_written_in_place_is_found_whatever_the_cache_holds(store):
    root, cache, metrics = store
    _read(root, cache)
    info = metrics.stat()
    text = metrics.read_bytes()
    bad = text.replace(b'"loss": 0.02,', b'"loss": "x!",', 1)  # step 50's loss, same length
    assert bad != text and len(bad) == len(text)
    metrics.write_bytes(bad)
    os.utime(metrics, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert _read(root, cache).error.startswith("metrics.jsonl line 50: loss")


def test_replaced_or_truncated_files_are_read_again(store):
    root, cache, metrics = store
    _read(root, cache)
    replacement = metrics.with_name("new")
    replacement.write_text(_lines(1, 300, loss=3.0))
    os.replace(replacement, metrics)  # a new inode: another entry
    assert _read(root, cache).columns["loss"][0] == 3.0
    metrics.write_text(_lines(1, 10, loss=4.0))  # the same inode, shorter
    shorter = _read(root, cache)
    assert shorter.num_steps == 10 and shorter.columns["loss"][0] == 4.0


@pytest.mark.parametrize("damage", ["flip-a-column-byte", "truncate", "garbage", "empty", "more-lines-header",
                                    "forged-short-column", "another-reader"])
def test_a_damaged_or_forged_entry_is_ignored(store, parsed, damage):
    root, cache, metrics = store
    good = _columns(_read(root, cache))
    (entry,) = cache.iterdir()
    blob = entry.read_bytes()
    header_end = blob.index(b"\n") + 1
    header = json.loads(blob[:header_end])

    def forge(changed: dict, body: bytes) -> bytes:  # a valid checksum over other contents
        import hashlib
        content = json.dumps(changed).encode() + b"\n" + body
        return content + hashlib.sha256(content).digest()

    if damage == "flip-a-column-byte":
        blob = blob[:header_end + 9] + bytes([blob[header_end + 9] ^ 0x40]) + blob[header_end + 10:]
    elif damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "garbage":
        blob = os.urandom(len(blob))
    elif damage == "empty":
        blob = b""
    elif damage == "more-lines-header":
        blob = forge({**header, "lines": header["lines"] + 5}, blob[header_end:-32])
    elif damage == "forged-short-column":  # the step column one value short: columns of unequal length
        header["columns"][0][2] -= 1
        blob = forge(header, blob[header_end:-32][8:])
    elif damage == "another-reader":
        blob = forge({**header, "fingerprint": "0" * 64}, blob[header_end:-32])
    entry.write_bytes(blob)
    again = _read(root, cache)
    assert again.readable and _columns(again) == good
    assert len(parsed) == 2  # read and validated again, not taken from the entry


def test_a_cache_that_cannot_be_written_costs_nothing_but_time(store, tmp_path):
    root, _, metrics = store
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("x")
    record = RunStore(root, cache=ColumnCache(blocked / "columns", min_bytes=0)).load(root / "run")
    assert record.readable and record.num_steps == 300


def test_default_dir_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_dir() == tmp_path / "ddlc" / "columns"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG spec: ignored
    assert default_dir() == Path.home() / ".cache" / "ddlc" / "columns"


def test_the_report_cli_caches_big_files_and_no_cache_writes_nothing(tmp_path):
    root = tmp_path / "runs"
    (root / "big").mkdir(parents=True)
    (root / "big" / "metrics.jsonl").write_text(_lines(1, 20_000))  # > 1 MB: worth an entry
    assert (root / "big" / "metrics.jsonl").stat().st_size > 1 << 20
    figures = []
    for name, flags in (("none", ["--no-cache"]), ("cold", []), ("warm", [])):
        out = tmp_path / f"{name}.md"
        result = run([PYTHON, "-m", "ddlc", "report", "utilization", "--since", "520w", "--runs-dir", str(root),
                      "-o", str(out), *flags], cwd=REPO, XDG_CACHE_HOME=str(tmp_path / "xdg"))
        assert result.returncode == 0, result.stderr
        assert "| big |" in out.read_text()
        figures.append([(tmp_path / f"{name}_files" / f"{f}.svg").read_text() for f in ("loss", "throughput")])
        entries = list((tmp_path / "xdg" / "ddlc" / "columns").glob("*.bin"))
        assert len(entries) == (0 if name == "none" else 1), name
    assert figures[0] == figures[1] == figures[2]


def _entry_parts(entry: Path) -> tuple[dict, dict]:
    from array import array

    blob = entry.read_bytes()[:-32]
    newline = blob.index(b"\n")
    header, position, columns = json.loads(blob[:newline]), newline + 1, {}
    for name, typecode, length in header["columns"]:
        values = array(typecode)
        values.frombytes(blob[position: position + length * values.itemsize])
        position += length * values.itemsize
        columns[name] = values
    return header, columns


def _forge(entry: Path, header: dict, columns: dict) -> None:
    """What someone who can write the entry can do: other contents with a recomputed checksum."""
    import hashlib

    header = {**header, "columns": [[name, values.typecode, len(values)] for name, values in columns.items()]}
    body = json.dumps(header).encode() + b"\n" + b"".join(values.tobytes() for values in columns.values())
    mode = entry.stat().st_mode
    entry.write_bytes(body + hashlib.sha256(body).digest())
    entry.chmod(mode)


@pytest.mark.parametrize("who", ["entry-of-another-user", "directory-of-another-user", "entry-group-writable",
                                 "directory-writable-by-all", "entry-a-symlink"])
def test_an_entry_others_could_have_written_is_never_read(store, parsed, who, tmp_path):
    """A forged entry with a valid checksum (here: every loss 9.0) is used only when the cache directory and the
    entry are the user's own and nobody else may write them: as ssh treats ~/.ssh."""
    root, cache, metrics = store
    good = _columns(_read(root, cache))
    assert (cache.stat().st_mode & 0o777, next(cache.iterdir()).stat().st_mode & 0o777) == (0o700, 0o600)
    (entry,) = cache.iterdir()
    header, columns = _entry_parts(entry)
    columns["loss"] = type(columns["loss"])("d", [9.0] * len(columns["loss"]))
    _forge(entry, header, columns)
    if who in ("entry-of-another-user", "directory-of-another-user"):
        if os.geteuid() != 0:
            pytest.skip("giving a file to another user needs root")
        os.chown(entry if who.startswith("entry") else cache, 65534, 65534)  # nobody
    elif who == "entry-group-writable":
        entry.chmod(0o620)
    elif who == "directory-writable-by-all":
        cache.chmod(0o777)
    elif who == "entry-a-symlink":
        elsewhere = tmp_path / "elsewhere.bin"
        os.replace(entry, elsewhere)
        entry.symlink_to(elsewhere)
    again = _read(root, cache)
    assert again.readable and _columns(again) == good and len(parsed) == 2  # read and validated again


def test_the_users_own_private_entry_is_trusted_as_documented(store, parsed):
    """The limit the docs state: whoever can write as you can forge an entry (and could edit the runs as well)."""
    root, cache, _ = store
    _read(root, cache)
    (entry,) = cache.iterdir()
    header, columns = _entry_parts(entry)
    columns["loss"] = type(columns["loss"])("d", [9.0] * len(columns["loss"]))
    _forge(entry, header, columns)
    assert set(_read(root, cache).columns["loss"]) == {9.0} and len(parsed) == 1


@pytest.mark.parametrize("mode", ["time-nan", "time-inf", "time-negative", "step-negative", "drop-time",
                                  "drop-loss", "drop-step", "empty", "step-as-double", "extra-column-short"])
def test_an_entry_readers_would_trip_on_is_a_miss(store, parsed, mode):
    """Structure checked on load, whatever the checksum says: columns the readers need, one value per line,
    values validation allows. A NaN time made the report fail with a traceback, a dropped column with KeyError,
    an empty entry hid the run."""
    from array import array

    root, cache, _ = store
    good = _columns(_read(root, cache))
    (entry,) = cache.iterdir()
    header, columns = _entry_parts(entry)
    if mode.startswith("time-"):
        columns["time"][5] = {"time-nan": math.nan, "time-inf": math.inf, "time-negative": -1.0}[mode]
    elif mode == "step-negative":
        columns["step"][-1] = -(2**63)
    elif mode.startswith("drop-"):
        del columns[mode.removeprefix("drop-")]
    elif mode == "empty":
        columns = {name: array(values.typecode) for name, values in columns.items()}
    elif mode == "step-as-double":
        columns["step"] = array("d", columns["step"])
    elif mode == "extra-column-short":
        columns["extra"] = array("d", [1.0] * (len(columns["step"]) - 1))
    _forge(entry, header, columns)
    again = _read(root, cache)
    assert again.readable and _columns(again) == good and len(parsed) == 2


def test_a_file_with_blank_lines_is_read_but_not_cached(tmp_path, parsed):
    root, cache = tmp_path / "runs", tmp_path / "cache"
    (root / "run").mkdir(parents=True)
    (root / "run" / "metrics.jsonl").write_text(_lines(1, 100) + "\n" + _lines(101, 200))
    assert _read(root, cache).num_steps == 200
    assert not list(cache.glob("*.bin"))  # its lines and values could not be checked against each other


def test_a_killed_writers_temp_file_is_removed_but_a_live_ones_is_kept(store):
    """kill -9 during a write left `.entry.XXXX.tmp` (19 MB) for 30 days."""
    root, cache, metrics = store
    _read(root, cache)
    orphan, live = cache / ".entry.orphan.tmp", cache / ".entry.live.tmp"
    orphan.write_bytes(b"x" * 1000)
    live.write_bytes(b"y" * 1000)
    old = metrics.stat().st_mtime - 2 * 3600
    os.utime(orphan, (old, old))
    with metrics.open("a") as handle:  # the next report writes an entry, and prunes
        handle.write(_lines(301, 310))
    _read(root, cache)
    assert not orphan.exists() and live.exists()
