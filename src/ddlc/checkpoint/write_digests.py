"""SHA-256 of DCP shard files computed while DCP writes them, so the manifest needs no second pass over the bytes.

DCP's local `FileSystemWriter` opens every shard through its `fs.create_stream`; `HashingFileSystem` wraps those
streams: each buffer written goes to the file and, in the same order, to a hasher thread of the stream's own, so
SHA-256 runs beside the serialising and the final fsync instead of in front of them (hashlib releases the GIL):

    DCP writer thread:  torch.save(tensor) --write(view)--> file (page cache) ... fsync
                                               `--------> hasher thread: sha256.update(view)   (joined at close)

Large buffers are the tensors' own storage, which DCP keeps alive until the stream's context ends (the hasher is
joined there, before the stream counts as written); small ones (pickles, zip headers) are copied, as torch reuses
them. A digest is only offered when
the stream was written strictly front to back and closed normally; the checkpointer also checks it against the
file's size on disk, and hashes the file by reading it back whenever no trustworthy digest is at hand.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import threading
from contextlib import contextmanager
from typing import Optional

from torch.distributed.checkpoint.filesystem import FileSystem

SHARD_SUFFIX = ".distcp"


HASH_BY_REFERENCE = 1 << 16  # buffers at least this big are hashed in place (tensor storage); smaller ones copied
# No early writeback (sync_file_range every 8 MB) any more: measured on 2026-12-01 it cost ~0.3 CPU-s of system time
# per 294 MB save, more than the overlap with the disk gained (BENCHMARKS.md); DCP's fsync at the end of each file
# still makes it durable before the COMMIT.


class _HashingStream:
    """A write-only view of a file that digests every byte written through it, in order, on a hasher thread."""

    def __init__(self, raw):
        self._raw = raw
        self._digest = hashlib.sha256()
        self.size = 0
        self.sequential = True  # False once anything but appending happened
        self._pending: queue.Queue = queue.Queue()
        self._hasher = threading.Thread(target=self._hash_in_order, daemon=True, name="ddlc-write-hash")
        self._hasher.start()

    def _hash_in_order(self) -> None:
        failed = False
        while (data := self._pending.get()) is not None:
            if failed:
                continue  # keep draining, so that finish() returns
            try:
                self._digest.update(data)  # hashlib releases the GIL on large buffers
            except Exception:  # noqa: BLE001 (no digest then: the checkpointer hashes the file by reading it back)
                failed = True
                self.sequential = False

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        written = self._raw.write(view)
        if written is None or written != len(view):
            self.sequential = False  # a short write: what reached the file is not what we digested
            return written
        # The writer may reuse a small buffer as soon as we return; a large one is a tensor's storage, kept alive
        # (and unchanged: staged or snapshot state) by DCP until the stream's context ends, where finish() waits.
        self._pending.put(view if len(view) >= HASH_BY_REFERENCE else bytes(view))
        self.size += written
        return written

    def finish(self) -> None:
        """Wait until every byte written so far is digested (idempotent)."""
        if self._hasher.is_alive():
            self._pending.put(None)
            self._hasher.join()

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, *args):
        self.sequential = False
        return self._raw.seek(*args)

    def truncate(self, *args):
        self.sequential = False
        return self._raw.truncate(*args)

    def flush(self) -> None:
        self._raw.flush()

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        self.finish()
        return self._digest.hexdigest()


class HashingFileSystem(FileSystem):
    """DCP's local filesystem, recording {absolute shard path: {size, sha256}} for every shard it writes."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._digests: dict[str, dict] = {}

    @contextmanager
    def create_stream(self, path, mode: str):
        with super().create_stream(path, mode) as stream:
            if mode != "wb" or not str(path).endswith(SHARD_SUFFIX):
                yield stream
                return
            key = os.path.abspath(str(path))
            with self._lock:
                self._digests.pop(key, None)  # an older digest of this path no longer describes it
            hashing = _HashingStream(stream)
            try:
                yield hashing
            finally:
                hashing.finish()  # before the buffers it still reads can go away, even when the write failed
            if hashing.sequential:  # reached only when the write finished without an exception
                with self._lock:
                    self._digests[key] = {"size": hashing.size, "sha256": hashing.hexdigest()}

    def take_digests(self, directory: str) -> dict[str, dict]:
        """Digests of shards written under `directory` ({name relative to it: {size, sha256}}), forgetting them."""
        base = os.path.abspath(directory)
        taken = {}
        with self._lock:
            for key in [k for k in self._digests if os.path.dirname(k) == base]:
                taken[os.path.basename(key)] = self._digests.pop(key)
        return taken


def guard_write_errors(writer) -> None:
    """Make every error inside a DCP writer's file streams reach the save, once, without a traceback.

    DCP's writer runs extra threads (`thread_count` > 1) whose exceptions are printed by Python's thread hook and
    otherwise lost: the save could go on with a file missing. Here each stream's exception (a full disk, a dead S3
    endpoint) is recorded and swallowed; `take_write_errors` hands them to the save, which then fails on every
    rank (the "written" agreement)."""
    fs = writer.fs
    if getattr(fs, "_ddlc_errors", None) is not None:
        return
    fs._ddlc_errors = []
    fs._ddlc_errors_lock = threading.Lock()
    create_stream = fs.create_stream

    @contextmanager
    def guarded(path, mode):
        opened = False
        try:
            with create_stream(path, mode) as stream:
                opened = True
                yield stream
        except Exception as exc:  # noqa: BLE001 (recorded for the save, which fails with it)
            with fs._ddlc_errors_lock:
                fs._ddlc_errors.append(root_cause(exc))
        if not opened:
            # The file could not even be opened (a directory in the way, no permission, too many open files): a
            # context manager must still yield once, or DCP gets "generator didn't yield" instead of the cause.
            # DCP writes this file's bytes into nothing; the save fails with the recorded error.
            try:
                yield io.BytesIO()
            except Exception:  # noqa: BLE001 (anything DCP does with the stand-in: the recorded error stands)
                pass

    fs.create_stream = guarded


def take_write_errors(writer) -> list[BaseException]:
    fs = getattr(writer, "fs", None)
    errors = getattr(fs, "_ddlc_errors", None)
    if not errors:
        return []
    with fs._ddlc_errors_lock:
        taken, errors[:] = list(errors), []
    return taken


def root_cause(exc: BaseException) -> BaseException:
    """The first OSError in the chain (a full disk shows up as torch's zip writer failing after ENOSPC)."""
    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return exc


def take_write_digests(writer, directory: str) -> dict[str, dict]:
    """What a writer from `CheckpointStore.dcp_writer` digested under `directory` ({} for writers that do not)."""
    fs: Optional[HashingFileSystem] = getattr(writer, "fs", None)
    return fs.take_digests(directory) if isinstance(fs, HashingFileSystem) else {}
