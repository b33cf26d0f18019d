"""The one reader of the local run store: `runs/<run>/metrics.jsonl`, `summary.json`, `config.yaml`.

    RunStore(runs_dir)                       one per dashboard server / report
      .paths()    -> run directories (any of the three files present), oldest first
      .load(path) -> RunRecord               cached; a file is parsed again only when its size/mtime/inode change,
                                             and metrics.jsonl is read from where the last read stopped
      .runs(since, names) -> [RunRecord]
    RunStore(runs_dir, cache=ColumnCache())  one-shot readers (`ddlc report`): a fresh read of metrics.jsonl starts
                                             from the columns cached for its very bytes (ddlc.dashboards.column_cache)

Every file is validated with the model its writer uses (ddlc.run_format: StepRecord, RunSummary; ddlc.config:
Config). A file that is malformed in any way (not a regular file, unreadable, not UTF-8, not JSON/YAML, a JSON
scalar where an object belongs, a wrong type, a number out of range, a line cut in the middle) makes that run
*unreadable*: `RunRecord.error` holds one line naming the file, the line and the field. Readers never raise for
the contents of a run directory; they show the error where the run would have been.

The trainer appends to metrics.jsonl while a run goes on: a last line without its newline is being written and
is read on the next refresh, not reported as malformed.

Steps are held as columns (one array of floats per key), not as a dict per step: a 50 MB metrics.jsonl is
~200,000 steps, and columns keep that to a few MB and make downsampling and cost sums single passes. Reading
metrics.jsonl into columns is ddlc.dashboards.metrics_file; this module reads the other two files and keeps the store.
"""

from __future__ import annotations

import math
import os
import socket
import stat
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import yaml
from pydantic import ValidationError

from ddlc.config.loader import ConfigError, validate
from ddlc.errors import UserError
from ddlc.dashboards.metrics_file import MetricsFile, RunFileError, _pydantic_reason, _short
from ddlc.run_format import CONFIG_FILE, METRICS_FILE, RUN_FILES, SUMMARY_FILE, RunSummary

if TYPE_CHECKING:
    from ddlc.dashboards.column_cache import ColumnCache

MAX_SMALL_FILE = 1 << 20  # summary.json and config.yaml are a few KB; anything past 1 MB is not one of them
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster on 500 runs
_CONFIGS: dict[str, dict[str, Any]] = {}  # config.yaml text -> validated config (read-only for callers)


@dataclass
class RunRecord:
    """A run as its files say. `error` set: the run is unreadable and only `name`, `path` and `error` mean anything."""

    name: str
    path: Path
    columns: dict[str, array] = field(default_factory=dict)
    summary: Optional[dict[str, Any]] = None
    config: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    version: tuple = ()  # changes whenever any of the run's files changed (cache key for derived data)

    @property
    def readable(self) -> bool:
        return self.error is None

    @property
    def num_steps(self) -> int:
        return len(self.columns.get("step", ()))

    @property
    def has_steps(self) -> bool:
        return self.error is None and self.num_steps > 0

    def column(self, key: str) -> array:
        """The values of `key` per logged step (NaN where a step did not log it)."""
        values = self.columns.get(key)
        if values is None:
            return array("d", [math.nan]) * self.num_steps
        return values

    def last(self, key: str) -> float:
        values = self.columns.get(key)
        return float(values[-1]) if values else math.nan

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def start_time(self) -> Optional[float]:
        """When the first logged step began (its end time minus its duration)."""
        if not self.num_steps:
            return None
        first_duration = self.columns.get("step_time_s", array("d", [0.0]))[0]
        return float(self.columns["time"][0]) - (first_duration if math.isfinite(first_duration) and first_duration > 0 else 0.0)

    @property
    def end_time(self) -> Optional[float]:
        return float(self.columns["time"][-1]) if self.num_steps else None

    @property
    def wall_seconds(self) -> float:
        if not self.num_steps:
            return 0.0
        return max(self.end_time - self.start_time, 0.0)

    @property
    def target_steps(self) -> Optional[int]:
        """training.max_steps from the run's config.yaml (None for epoch-based runs)."""
        value = (self.config.get("training") or {}).get("max_steps")
        return int(value) if value else None

    @property
    def target_epochs(self) -> Optional[float]:
        value = (self.config.get("training") or {}).get("epochs")
        return float(value) if value else None

    @property
    def node(self) -> str:
        """Where the run ran: summary.json's `node` when the runtime records it, else this machine."""
        return str((self.summary or {}).get("node") or socket.gethostname())

    @property
    def num_nodes(self) -> int:
        return self.recorded_num_nodes or 1

    @property
    def recorded_num_nodes(self) -> Optional[int]:
        """summary.json's `num_nodes`; None for a run that has not written one (still going, or an older run)."""
        value = (self.summary or {}).get("num_nodes")
        return int(value) if value else None

    @property
    def instance_type(self) -> Optional[str]:
        return (self.summary or {}).get("instance_type")

    @property
    def gpus(self) -> int:
        """GPUs the run used, when the runtime recorded it (0 for CPU runs and older run stores)."""
        return int((self.summary or {}).get("gpus") or 0)


# -- one file each -------------------------------------------------------------------------------------------

def _stat_regular(path: Path) -> Optional[os.stat_result]:
    """stat of `path` (following links), None when absent; a directory, FIFO or device is an error."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise RunFileError(f"{path.name} is a link to a missing file") from None
        return None
    except OSError as error:
        raise RunFileError(f"{path.name}: cannot read: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise RunFileError(f"{path.name} is {kind}")
    return info


def _signature(info: Optional[os.stat_result]) -> tuple:
    return () if info is None else (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _read_small(path: Path, info: os.stat_result) -> str:
    if info.st_size > MAX_SMALL_FILE:
        raise RunFileError(f"{path.name} is {info.st_size:,} bytes, more than such a file can be ({MAX_SMALL_FILE:,})")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SMALL_FILE + 1)
    except OSError as error:
        raise RunFileError(f"{path.name}: cannot read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RunFileError(f"{path.name}: not UTF-8 text (byte {error.start})") from None


def parse_summary(path: Path, info: os.stat_result) -> dict[str, Any]:
    text = _read_small(path, info)
    try:
        summary = RunSummary.model_validate_json(text)
    except ValidationError as error:
        _, reason = _pydantic_reason(error)
        raise RunFileError(f"{path.name}: {_short(reason)}") from None
    fields = summary.model_dump()
    if "num_nodes" not in summary.model_fields_set:
        fields["num_nodes"] = None  # not recorded (an older run): the cost views fall back to --nodes
    return fields


def parse_config(path: Path, info: os.stat_result) -> dict[str, Any]:
    text = _read_small(path, info)
    if text in _CONFIGS:  # runs started from one config file differ in a line or two; many are identical
        return _CONFIGS[text]
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise RunFileError(f"{path.name}{line}: not valid YAML ({_short(getattr(error, 'problem', None) or error, 80)})") from None
    except (ValueError, RecursionError) as error:  # an int of 5,000 digits; nesting past the recursion limit
        raise RunFileError(f"{path.name}: {_short(error, 100)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RunFileError(f"{path.name}: top level is a {type(data).__name__}, not a mapping of sections")
    try:
        parsed = validate(data, path.name).model_dump(mode="json")
        if len(_CONFIGS) > 512:
            _CONFIGS.clear()
        _CONFIGS[text] = parsed
        return parsed
    except ConfigError as error:
        raise RunFileError(_short(error)) from None
    except (RecursionError, ValueError, TypeError) as error:
        raise RunFileError(f"{path.name}: {_short(error, 100)}") from None


# -- the store -----------------------------------------------------------------------------------------------

class _Entry:
    def __init__(self, cache: Optional[ColumnCache] = None) -> None:
        self.metrics = MetricsFile(cache)
        self.small: dict[str, tuple[tuple, Any]] = {}  # file name -> (signature, parsed value or RunFileError)
        self.record: Optional[RunRecord] = None


class RunStore:
    """Runs under `runs_dir` (plus `extra` run directories), each file parsed once and re-read on change.
    Safe to share between threads (the dashboard server's)."""

    def __init__(self, runs_dir: Path | str, extra: Iterable[Path | str] = (), max_age_s: float = 0.0,
                 cache: Optional[ColumnCache] = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.cache = cache  # columns on disk between processes (one-shot readers); the server keeps them in memory
        self.extra = [Path(p) for p in extra]
        self.max_age_s = max_age_s  # runs() answers from its last look at the disk when younger than this
        self._entries: dict[Path, _Entry] = {}
        self._lock = threading.Lock()
        self._last: tuple[float, Any, list[RunRecord]] = (float("-inf"), None, [])
        self._listed: tuple[float, list[Path]] = (float("-inf"), [])

    def paths(self) -> list[Path]:
        at, last = self._listed
        if time.monotonic() - at <= self.max_age_s:
            return list(last)
        paths = list_runs(self.runs_dir)
        if self.extra:
            known = {p.resolve() for p in paths}
            paths += [p for p in self.extra if p.resolve() not in known]
        self._listed = (time.monotonic(), paths)
        return list(paths)

    def load(self, path: Path | str) -> RunRecord:
        path = Path(path)
        with self._lock:
            entry = self._entries.get(path)
            if entry is None:
                entry = self._entries[path] = _Entry(self.cache)
            return _refresh(entry, path)

    def runs(self, since: Optional[float] = None, names: Optional[Iterable[str]] = None,
             paths: Optional[list[Path]] = None) -> list[RunRecord]:
        """Runs with a step logged at or after `since` (Unix seconds; unreadable runs whose files changed since
        then are included, so the reader learns about them), optionally only those named."""
        wanted = set(names) if names else None
        key = (since, frozenset(wanted) if wanted else None)
        at, last_key, last = self._last
        if last_key == key and time.monotonic() - at <= self.max_age_s:
            return list(last)  # many clients refreshing the same page: one look at the disk per max_age_s
        result = self._runs(since, wanted, self.paths() if paths is None else paths)
        self._last = (time.monotonic(), key, result)
        return list(result)

    def _runs(self, since: Optional[float], wanted: Optional[set[str]], listed: list[Path]) -> list[RunRecord]:
        paths = [p for p in listed if wanted is None or p.name in wanted]
        with self._lock:  # forget runs that are gone
            for gone in set(self._entries) - set(paths) - set(self.extra):
                del self._entries[gone]
        result = []
        for path in paths:
            if since is not None and _newest_mtime(path) < since:
                continue  # no file changed since the window began: no step in it (skips the parse)
            run = self.load(path)
            if run.error is None and since is not None and (run.end_time is None or run.end_time < since):
                continue
            result.append(run)
        return result


def _newest_mtime(run_dir: Path) -> float:
    newest = 0.0
    for name in RUN_FILES:
        try:
            newest = max(newest, os.stat(run_dir / name).st_mtime)
        except OSError:
            continue
    return newest


def _small(entry: _Entry, path: Path, parse: Any) -> Any:
    info = _stat_regular(path)
    signature = _signature(info)
    cached = entry.small.get(path.name)
    if cached is not None and cached[0] == signature:
        value = cached[1]
    else:
        try:
            value = None if info is None else parse(path, info)
        except RunFileError as error:
            value = error
        entry.small[path.name] = (signature, value)
    if isinstance(value, RunFileError):
        raise value
    return value


def _refresh(entry: _Entry, run_dir: Path) -> RunRecord:
    name = run_dir.name
    try:
        summary = _small(entry, run_dir / SUMMARY_FILE, parse_summary)
        config = _small(entry, run_dir / CONFIG_FILE, parse_config) or {}
        metrics_path = run_dir / METRICS_FILE
        info = _stat_regular(metrics_path)
        entry.metrics.refresh(metrics_path, info)
        if entry.metrics.error is not None:
            raise RunFileError(entry.metrics.error)
    except RunFileError as error:
        return RunRecord(name, run_dir, error=_short(error, 240), version=("error", str(error)))
    except OSError as error:  # the directory itself vanished or is unreadable
        return RunRecord(name, run_dir, error=_short(f"cannot read: {error.strerror or error}", 240),
                         version=("error", str(error)))
    bad_start = _start_not_a_date(entry.metrics.columns)
    if bad_start is not None:
        return RunRecord(name, run_dir, error=bad_start, version=("error", bad_start))
    version = (entry.metrics.identity, entry.metrics.offset,
               tuple(sig for sig, _ in entry.small.values()))
    if entry.record is not None and entry.record.version == version:
        return entry.record
    entry.record = RunRecord(name, run_dir, entry.metrics.columns, summary, config, None, version)
    return entry.record


def _start_not_a_date(columns: dict[str, array]) -> Optional[str]:
    """Why the run's start (its first step's time minus that step's duration) is not a date, or None. Each `time`
    is checked by StepRecord; a step_time_s of 1e12 s would still put the start 30,000 years before it."""
    times, durations = columns.get("time"), columns.get("step_time_s")
    if not times or not durations:
        return None
    start = times[0] - durations[0]
    if not math.isfinite(durations[0]) or durations[0] <= 0 or 0 <= start:
        return None  # a NaN, infinite or negative duration is not counted (RunRecord.start_time)
    return (f"{METRICS_FILE}, first step: step_time_s {durations[0]:.6g} s ends at time {times[0]:.6g}, so the "
            f"run would have started before 1970 (not a date)")


# -- module-level helpers (one-shot readers: reports, tests) ------------------------------------------------

def list_runs(runs_dir: Path | str) -> list[Path]:
    """Run directories under `runs_dir` (those with a metrics.jsonl, config.yaml or summary.json), oldest first."""
    root = Path(runs_dir)
    try:
        children = list(root.iterdir()) if root.is_dir() else []
    except OSError:
        return []
    found = []
    for child in children:
        present, mtime = False, 0.0
        base = os.fspath(child)
        for file_name in RUN_FILES:
            try:
                info = os.lstat(os.path.join(base, file_name))  # a dangling link still marks a run (unreadable)
            except OSError:
                continue
            present = True
            if file_name == METRICS_FILE:
                mtime = info.st_mtime
        if present:
            found.append((mtime, child.name, child))
    return [path for _, _, path in sorted(found)]


def load_run(path: Path | str) -> RunRecord:
    """One run, read now. Raises UserError only when `path` is not a directory at all."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UserError(f"--run: {run_dir} is not a run directory (expected runs/<name>/ with metrics.jsonl)")
    return RunStore(run_dir.parent).load(run_dir)


def load_runs(runs_dir: Path | str, since: Optional[float] = None, names: Optional[list[str]] = None,
              cache: Optional[ColumnCache] = None) -> list[RunRecord]:
    """Runs of the store that logged a step at or after `since` (Unix seconds), optionally only `names`;
    unreadable runs are included with their `error`."""
    return RunStore(runs_dir, cache=cache).runs(since=since, names=names)
