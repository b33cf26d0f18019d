"""metrics.jsonl columns kept on disk between one-shot readers (`ddlc report`), used only for the very same bytes.

    reader (MetricsFile, fresh, file >= 1 MB)           $XDG_CACHE_HOME/ddlc/columns/ (default ~/.cache/ddlc)
      ColumnCache.load(stat, file) -> Cached | None  <-  <device>-<inode>.bin
          hit: same device and inode, at least `offset` bytes, and sha256 of the file's bytes [0, offset) equals the
          entry's: the columns are those of exactly these bytes, validated when the entry was written
      ... the reader parses only the bytes after `offset` (a live run's appended steps) ...
      ColumnCache.store(stat, offset, lines, digest, columns)  ->  written atomically (temp file + rename)

An entry holds one header line (JSON: format, the reader's fingerprint, device, inode, offset, lines, digest of the
file's bytes, each column's name, type code and length), the columns' raw bytes and a sha256 of all of that. A
torn, truncated or edited entry, one written by another version of the reader (the fingerprint hashes the source
of the modules that validate lines and build columns), or one for other bytes is a miss, never an error: the file
is read and validated as if there were no cache. The cache never decides whether a file is valid: only files read
without error (and without blank lines) are stored. Entries unused for 30 days are removed, temp files of a
killed writer after an hour.

Trust: the checksum catches damage, not forgery (anyone who can write the entry can recompute it). So an entry
is read only when it and the directory (created 0700) are this user's own and writable by nobody else, as ssh
treats ~/.ssh, and it is checked for what the readers rely on (step, time, loss present; one value per line in
every column; steps and times in range). Someone who can write as this user can still forge one; they could
as well edit the runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

from ddlc.run_format import MAX_STEP, MAX_TIME

FORMAT = 1
MIN_BYTES = 1 << 20  # smaller files parse in a few ms: an entry would cost about as much to write and read
MAX_AGE_S = 30 * 86400  # an entry nobody read for this long is removed
TMP_AGE_S = 3600  # a temp file this old is a write that was killed, not one in progress
REQUIRED = {"step", "time", "loss"}  # keys every validated line has (ddlc.run_format.StepRecord)
_TYPECODES = {"q", "d"}


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"  # XDG: a relative value is ignored
    return root / "ddlc" / "columns"


def _fingerprint() -> str:
    """The reader's version: a change to how lines are validated or columns built makes old entries misses."""
    from ddlc import run_format
    from ddlc.dashboards import metrics_file

    digest = hashlib.sha256(str(FORMAT).encode())
    for module in (run_format, metrics_file):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


@dataclass
class Cached:
    offset: int  # bytes of the file the columns hold (whole lines)
    lines: int
    columns: dict[str, array]
    digest: Any  # hashlib.sha256 of the file's bytes [0, offset), to be extended by the bytes read after
    tail: bytes  # the last bytes before offset


class ColumnCache:
    def __init__(self, directory: Optional[Path | str] = None, min_bytes: int = MIN_BYTES) -> None:
        self.directory = Path(directory) if directory is not None else default_dir()
        self.min_bytes = min_bytes
        self._fingerprint: Optional[str] = None
        self._pruned = False

    def _entry(self, info: os.stat_result) -> Path:
        # Named after the file's device and inode, not its path: a run directory renamed keeps its entry, and
        # no path needs resolving. An inode reused by another file is caught by the digest.
        return self.directory / f"{info.st_dev:x}-{info.st_ino:x}.bin"

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = _fingerprint()
        return self._fingerprint

    def load(self, info: os.stat_result, handle: BinaryIO) -> Optional[Cached]:
        """The cached columns of the file `info` describes (open as `handle`, left at any position), or None."""
        entry = self._entry(info)
        try:
            fd = self._open_private(entry.name)
            if fd is None:
                return None
            with open(fd, "rb") as stream:
                found = os.fstat(stream.fileno())
                # a regular file no bigger than 64 columns of 8 bytes per 16 bytes of metrics (a line is ~30 or more)
                if not stat.S_ISREG(found.st_mode) or found.st_size > (4 << 10) + 32 * info.st_size:
                    return None
                blob = stream.read()
        except OSError:
            return None
        from ddlc.dashboards.metrics_file import MAX_COLUMNS

        try:
            header, columns = _decode(blob)
        except (ValueError, KeyError, TypeError, OverflowError):
            return None  # torn, truncated, edited or from another format: a miss
        if len(columns) > MAX_COLUMNS or not _readable_columns(columns, header["lines"]):
            return None
        if (header["fingerprint"] != self.fingerprint() or header["dev"] != info.st_dev
                or header["ino"] != info.st_ino or not 0 < header["offset"] <= info.st_size):
            return None
        offset = header["offset"]
        digest = hashlib.sha256()
        handle.seek(0)
        left, last, lines = offset, b"", 0
        while left:
            data = handle.read(min(left, 4 << 20))
            if not data:
                return None  # shorter than it said (truncated since the stat)
            digest.update(data)
            lines += data.count(b"\n")  # line numbers of later errors count on it: checked, not trusted
            left -= len(data)
            last = data[-64:] if len(data) >= 64 else (last + data)[-64:]
        if digest.hexdigest() != header["digest"] or not last.endswith(b"\n") or lines != header["lines"]:
            return None  # other bytes than those the columns were built from
        try:
            os.utime(entry)  # used: not pruned
        except OSError:
            pass
        return Cached(offset, header["lines"], columns, digest, last)

    def store(self, info: os.stat_result, offset: int, lines: int, digest: Any, columns: dict[str, array]) -> None:
        """Best effort: a cache that cannot be written (read-only home, full disk) only costs the next reader time."""
        header = {"format": FORMAT, "fingerprint": self.fingerprint(), "dev": info.st_dev, "ino": info.st_ino,
                  "offset": offset, "lines": lines, "digest": digest.hexdigest(),
                  "columns": [[name, values.typecode, len(values)] for name, values in columns.items()]}
        parts = [json.dumps(header).encode() + b"\n", *columns.values()]  # arrays written as they are, no copy
        checksum = hashlib.sha256()
        if len(columns.get("step", ())) != lines:
            return  # blank lines in the file: load could not check the entry's length against its lines
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not _private(os.stat(self.directory)):
                return  # load would refuse its entries: writing them only costs time
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".entry.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    for part in parts:
                        checksum.update(part)
                        handle.write(part)
                    handle.write(checksum.digest())
                os.replace(tmp, self._entry(info))
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            self._prune()
        except OSError:
            pass

    def _prune(self) -> None:
        if self._pruned:
            return
        self._pruned = True
        now = time.time()
        with os.scandir(self.directory) as entries:
            for item in entries:
                try:
                    # a temp file is a write killed midway (kill -9, power loss) once it is older than any
                    # write takes; a younger one may be another report writing right now
                    age = MAX_AGE_S if item.name.endswith(".bin") else TMP_AGE_S if item.name.endswith(".tmp") else None
                    if age is not None and item.stat(follow_symlinks=False).st_mtime < now - age:
                        os.unlink(item.path)
                except OSError:
                    continue

    def _open_private(self, name: str) -> Optional[int]:
        """A descriptor of entry `name`, or None unless the directory and the entry are this user's own and
        nobody else may write them (as ssh treats ~/.ssh): another user's entry is never read. The entry is
        opened relative to the directory checked (no swap in between), without following a symlink and without
        blocking on a FIFO."""
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
        directory = os.open(self.directory, flags | os.O_DIRECTORY)
        try:
            if not _private(os.fstat(directory)):
                return None
            fd = os.open(name, flags | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=directory)
        finally:
            os.close(directory)
        if not _private(os.fstat(fd)):
            os.close(fd)
            return None
        return fd


def _private(info: os.stat_result) -> bool:
    """Owned by this user and not writable by group or others."""
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _readable_columns(columns: dict[str, array], lines: int) -> bool:
    """What the readers rely on, as validation would have made it: one value per line in every column (entries
    are written only for files without blank lines); step, time and loss present; step and time in range."""
    if any(len(values) != lines for values in columns.values()):
        return False
    if not lines:
        return True
    if not REQUIRED <= columns.keys() or any(columns[name].typecode != "d" for name in columns if name != "step"):
        return False
    import numpy as np  # views of the arrays, no copy: ~20x faster than min()/max() over 1M Python floats

    if columns["step"].typecode != "q":
        return False
    steps, times = np.frombuffer(columns["step"], dtype=np.int64), np.frombuffer(columns["time"], dtype=np.float64)
    if not (0 <= steps.min() and steps.max() <= MAX_STEP):
        return False
    return bool(np.isfinite(times).all()) and 0 <= times.min() and times.max() <= MAX_TIME  # NaN fails isfinite


def _decode(blob: bytes) -> tuple[dict, dict[str, array]]:
    """Header and columns of an entry; ValueError/KeyError/TypeError for anything but a whole, intact one."""
    if len(blob) < 32 or hashlib.sha256(blob[:-32]).digest() != blob[-32:]:
        raise ValueError("checksum")
    blob = blob[:-32]
    newline = blob.index(b"\n")
    header = json.loads(blob[:newline])
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError("format")
    for key in ("dev", "ino", "offset", "lines"):
        if type(header[key]) is not int or header[key] < 0:
            raise ValueError(key)
    if not isinstance(header["digest"], str) or not isinstance(header["fingerprint"], str):
        raise ValueError("digest")
    columns: dict[str, array] = {}
    position = newline + 1
    lengths = set()
    for name, typecode, length in header["columns"]:
        if not isinstance(name, str) or typecode not in _TYPECODES or type(length) is not int or name in columns:
            raise ValueError("column")
        values = array(typecode)
        size = length * values.itemsize
        if length < 0 or position + size > len(blob):
            raise ValueError("length")
        values.frombytes(blob[position: position + size])
        position += size
        columns[name] = values
        lengths.add(length)
    if position != len(blob) or len(lengths) > 1 or (columns and columns.get("step", array("q")).typecode != "q"):
        raise ValueError("shape")
    if (lengths and "step" not in columns) or (header["lines"] < next(iter(lengths), 0)):
        raise ValueError("shape")
    return header, columns
