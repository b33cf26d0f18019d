"""metrics.jsonl of one run, read incrementally into columns (the part of ddlc.dashboards.runs that reads steps).

    MetricsFile.refresh(path, stat)   reads the bytes after `offset` (whole lines; an unfinished last line waits)
      4 MB read at a time -> blocks of whole lines (~256 KB) -> StepRecord validated a block per pydantic-core call
        -> the common block (every line with the same keys): one C-level pass per column  (_append_uniform)
        -> any other block: keys some lines lack are NaN there, non-numbers via metric_value  (_append_any)
        -> a block that fails validation: checked for UTF-8, then line by line to name the bad line
      with a ColumnCache (one-shot readers): a fresh read starts from the columns cached for the same bytes

A malformed line sets `error` (one line naming the file, the line and the field); nothing raises to the caller.
"""

from __future__ import annotations

import hashlib
import math
import os
from array import array
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pydantic import ValidationError

from ddlc.run_format import STEP_RECORDS, metric_value

if TYPE_CHECKING:
    from ddlc.dashboards.column_cache import ColumnCache

MAX_COLUMNS = 64  # metrics kept per run: the trainer logs 9; library users may add a few of their own
CHUNK_BYTES = 4 << 20  # metrics.jsonl is read this many bytes at a time (bounded memory; the longest line)
PARSE_BYTES = 256 << 10  # and validated in blocks of about this many: ~25% faster than 4 MB ones (CPU caches)


def _short(text: Any, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _pydantic_reason(error: ValidationError, first_index: int = 0) -> tuple[Optional[int], str]:
    """(index of the bad item or None, 'field: message') of a validation error's first problem."""
    problem = error.errors(include_url=False)[0]
    loc = list(problem.get("loc") or ())
    index = loc.pop(0) if loc and isinstance(loc[0], int) else None
    branches = [p for p in loc if isinstance(p, str) and (p in _TYPE_NAMES or "[" in p)]  # a Union's member names
    where = ".".join(str(p) for p in loc if p not in branches)
    message = problem.get("msg", "invalid")
    if problem.get("type") == "json_invalid":
        message = "not valid JSON (" + message.removeprefix("Invalid JSON: ") + ")"
    elif branches:
        message = "should be a number (or the string nan, inf or -inf)"
    value = problem.get("input")
    if "input" in problem and not isinstance(value, (dict, list, bytes)) and problem.get("type") not in ("missing", "json_invalid"):
        message += f" (got {_short(repr(value), 40)})"
    return (None if index is None else index + first_index), (f"{where}: {message}" if where else message)


_TYPE_NAMES = {"float", "int", "str", "bool", "none"}


class RunFileError(Exception):
    """One file of a run is malformed; str() is the one-line reason."""


class MetricsFile:
    """metrics.jsonl read incrementally: `offset` bytes (whole lines) are in `columns`; the rest is read next time."""

    def __init__(self, cache: Optional[ColumnCache] = None) -> None:
        self.cache = cache
        self._reset()

    def _reset(self) -> None:
        self.identity: tuple = ()
        self.offset = 0
        self.lines = 0
        self.seen: tuple = ()  # (size, mtime_ns) at the last read
        self.tail = b""  # the last bytes before offset, to tell an append from a rewrite
        self.columns: dict[str, array] = {}
        self.owned = False  # columns are this read's own copies (nobody else holds them): extended in place
        self.error: Optional[str] = None

    def refresh(self, path: Path, info: Optional[os.stat_result]) -> None:
        if info is None:
            self._reset()
            return
        identity = (info.st_dev, info.st_ino)
        if identity != self.identity or info.st_size < self.offset:  # replaced or truncated: start over
            self._reset()
            self.identity = identity
        seen = (info.st_size, info.st_mtime_ns)
        if seen == self.seen:
            return
        if self.error is not None:  # changed since it was found malformed (repaired?): read it again
            self._reset()
            self.identity = identity
        self.seen = seen
        self.owned = False  # the columns may be in a RunRecord handed out: the first append copies them
        try:
            with open(path, "rb") as handle:
                if self.offset:  # rewritten in place rather than appended to: the bytes before offset differ
                    handle.seek(self.offset - len(self.tail))
                    if handle.read(len(self.tail)) != self.tail:
                        self._reset()
                        self.identity, self.seen = identity, seen
                digest = None
                if self.cache is not None and not self.offset and info.st_size >= self.cache.min_bytes:
                    # a fresh read of a big file: start from the columns cached for its bytes, if any
                    cached = self.cache.load(info, handle)
                    if cached is not None:
                        self.columns, self.offset, self.lines, self.tail = (cached.columns, cached.offset,
                                                                            cached.lines, cached.tail)
                        self.owned = True  # arrays made from the entry: nobody else holds them
                    digest = cached.digest if cached is not None else hashlib.sha256()
                cached_offset = self.offset
                self._read(path, handle, digest)
                if digest is not None and self.offset > cached_offset:
                    self.cache.store(info, self.offset, self.lines, digest, self.columns)
        except OSError as error:
            self.error = f"{path.name}: cannot read: {error.strerror or error}"
        except RunFileError as error:
            self.error = str(error)

    def _read(self, path: Path, handle: Any, digest: Any) -> None:
        """Whole lines from `offset` on into the columns; `digest` (when caching) takes in the bytes parsed."""
        handle.seek(self.offset)
        while True:
            data = handle.read(CHUNK_BYTES)
            if not data:
                return
            end = data.rfind(b"\n")
            if end < 0:
                if len(data) < CHUNK_BYTES:
                    return  # an unfinished last line: the trainer is writing it
                raise RunFileError(f"{path.name} line {self.lines + 1}: longer than {CHUNK_BYTES:,} bytes")
            block = data[: end + 1]
            start = 0
            while start < len(block):  # blocks of whole lines, about PARSE_BYTES each
                stop = block.rfind(b"\n", start, start + PARSE_BYTES) + 1
                if stop <= start:  # a line longer than PARSE_BYTES: the block is that line
                    stop = block.index(b"\n", start) + 1
                self._parse(path.name, block[start:stop] if start or stop < len(block) else block)
                start = stop
            if digest is not None:
                digest.update(block)
            self.offset += end + 1
            self.tail = data[max(end + 1 - 64, 0): end + 1]
            handle.seek(self.offset)

    def _parse(self, name: str, block: bytes) -> None:
        first_line = self.lines + 1
        self.lines += block.count(b"\n")
        # The common case, one JSON object per line and no blank ones: the block is a JSON array once its
        # newlines become commas, validated in one pydantic-core call (no per-line Python work). pydantic-core
        # rejects bytes that are not UTF-8, so a block that passes is text. Anything else takes the slower
        # path below, which checks UTF-8 first, skips blank lines and names the first bad line.
        try:
            self._append(STEP_RECORDS.validate_json(b"[" + block[:-1].replace(b"\n", b",") + b"]"))
            return
        except ValidationError:
            pass
        try:
            block.decode("utf-8")
        except UnicodeDecodeError as error:
            bad = first_line + block.count(b"\n", 0, error.start)
            raise RunFileError(f"{name} line {bad}: not UTF-8 text") from None
        raw = block.split(b"\n")[:-1]
        numbers = [i for i, line in enumerate(raw, first_line) if line.strip()]
        lines = [line for line in raw if line.strip()]
        if not lines:
            return
        try:
            records = STEP_RECORDS.validate_json(b"[" + b",".join(lines) + b"]")
        except ValidationError as error:
            index, reason = _pydantic_reason(error)
            if index is None:  # a JSON syntax error: find its line by parsing one at a time
                for number, line in zip(numbers, lines):
                    try:
                        STEP_RECORDS.validate_json(b"[" + line + b"]")
                    except ValidationError as line_error:
                        raise RunFileError(f"{name} line {number}: {_short(_pydantic_reason(line_error)[1])}") from None
                raise RunFileError(f"{name}: {_short(reason)}") from None
            raise RunFileError(f"{name} line {numbers[index]}: {_short(reason)}") from None
        self._append(records)

    def _append(self, records: list[dict[str, Any]]) -> None:
        # The first block of a refresh copies the columns (a RunRecord handed out earlier keeps columns of equal
        # length while another thread reads it); later blocks of the same refresh extend that copy in place.
        if self.owned:
            columns = self.columns
        else:
            columns = {key: array(values.typecode, values) for key, values in self.columns.items()}
            self.owned = True
        if records and not _append_uniform(columns, records):
            _append_any(columns, records)
        self.columns = columns


def _append_uniform(columns: dict[str, array], records: list[dict[str, Any]]) -> bool:
    """The common case, every line with the same keys as the run's columns so far (or the first block): each
    column filled from one C-level pass. False, with `columns` untouched, when the block is anything else."""
    keys = list(records[0])
    if len(keys) > MAX_COLUMNS or len(set(map(len, records))) != 1 or not columns.keys() <= set(keys):
        return False
    fresh = {}
    for key in keys:
        try:  # every record has len(keys) keys, each of `keys` among them (KeyError otherwise): the same keys
            values = list(map(itemgetter(key), records))
        except KeyError:
            return False
        try:  # numbers (step: validated ints) converted in C
            fresh[key] = array("q" if key == "step" else "d", values)
        except (TypeError, OverflowError):  # "nan"/"inf" strings, None, a library user's own non-numbers
            fresh[key] = array("d", map(metric_value, values))
    before = len(columns.get("step", ()))
    for key, values in fresh.items():
        if key in columns:
            columns[key].extend(values)
        else:  # a key this run's earlier lines did not log
            columns[key] = array(values.typecode, [0 if key == "step" else math.nan]) * before + values
    return True


def _append_any(columns: dict[str, array], records: list[dict[str, Any]]) -> None:
    """Any block: keys some lines lack are NaN there, non-numbers go through metric_value, at most MAX_COLUMNS."""
    before = len(columns.get("step", ()))
    for key in dict.fromkeys(chain.from_iterable(records)):  # every key, first-seen order, in C
        if key not in columns and len(columns) < MAX_COLUMNS:  # hostile files: one new key per line
            columns[key] = array("q" if key == "step" else "d", [0 if key == "step" else math.nan]) * before
    columns["step"] = columns.get("step", array("q"))
    columns["step"].extend(map(itemgetter("step"), records))
    for key, values in columns.items():
        if key == "step":
            continue
        try:  # a number on every line: converted in C, no list in between
            values.extend(array("d", map(itemgetter(key), records)))
            continue
        except (KeyError, TypeError, OverflowError):  # a key some lines lack; "nan" strings, None, big ints
            pass
        raw = list(map(dict.get, records, repeat(key), repeat(math.nan)))
        try:
            values.extend(array("d", raw))
        except (TypeError, OverflowError):  # "nan"/"inf" strings, None, a library user's own non-numbers
            values.extend(array("d", [metric_value(value) for value in raw]))
