"""A DCP reader for local shard files that reads each tensor's bytes straight into the tensor being loaded, and
SHA-256-digests the very bytes the model was loaded from.

DCP's `FileSystemReader` decodes every stored item with `torch.load` from the file: thousands of small reads, a
freshly allocated tensor per item, then a copy of it into the destination. `DirectReader` keeps DCP's format
(every item is still a `torch.save` record at the offset DCP's metadata names; files stay readable by DCP itself)
and changes only how the bytes travel:

* for a large item that fills a whole destination tensor, it reads the record's small head and tail, lets
  `torch.load(map_location="meta")` decode the pickle and say where the tensor's bytes start, and reads those bytes
  with one `readinto` into the destination's memory — no intermediate buffer, no second copy;
* a destination on a device (CUDA on a GPU resume) is filled the same way through a page-locked host buffer per
  reading thread: one `readinto` into it, then one host-to-device copy (no decode, no pageable bounce buffer);
* any other item (small, partial, another dtype or layout, BYTE_IO) is read whole into memory and decoded there;
* for the files named in `digest_names`, every byte of the file (between items too) goes, in file order, through a
  hasher thread (hashlib releases the GIL), which overlaps with the next reads.

Files with DCP storage extensions (transform descriptors) are read by DCP's own code path.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import sys
import threading
from collections import defaultdict
from typing import Optional

import torch
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner
from torch.futures import Future

DIRECT_MIN_BYTES = 1 << 20  # smaller items are cheaper to read whole than in three pieces
EDGE_BYTES = 4096  # head and tail of a record read first: the pickle, the small records and the zip directory


class _MemoryFile(io.RawIOBase):
    """A read-only, seekable file over in-memory pieces of a record (`pieces`: {start offset: bytes-like}), of
    `length` bytes in all. Reading bytes that are not in memory raises `_NotInMemory`."""

    def __init__(self, pieces: dict[int, memoryview], length: int):
        super().__init__()
        self._pieces = sorted(pieces.items())
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        out = memoryview(buffer).cast("B")
        count = max(0, min(len(out), self._length - self._pos))
        for start, piece in self._pieces:
            if start <= self._pos and self._pos + count <= start + len(piece):
                out[:count] = piece[self._pos - start:self._pos - start + count]
                self._pos += count
                return count
        raise _NotInMemory


class _NotInMemory(Exception):
    pass


class _Hasher:
    """SHA-256 of a file fed in order, on a thread of its own; `None` digest when not hashing."""

    def __init__(self, enabled: bool):
        self.digest = hashlib.sha256() if enabled else None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ddlc-read-hash") if enabled else None
        if self._thread is not None:
            self._thread.start()

    def add(self, data) -> None:
        if self.digest is not None and len(data):
            self._queue.put(data)  # the caller keeps `data` unchanged until close()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self.digest.update(data)

    def close(self) -> Optional[str]:
        if self._thread is None:
            return None
        self._queue.put(None)
        self._thread.join()
        return self.digest.hexdigest()


class DirectReader(FileSystemReader):
    """`FileSystemReader` that reads tensors' bytes straight into their destinations; `digests` holds the SHA-256 of
    every file named in `digest_names` that was read in full (a file read only in part is left for the caller)."""

    def __init__(self, path, digest_names: frozenset[str] = frozenset(), io_threads: int = 1,
                 stage_cpu: bool = False):
        super().__init__(path)
        self.stage_cpu = stage_cpu  # tests: send CPU destinations through the staging buffer too
        self.digest_names = frozenset(digest_names)
        self.io_threads = max(1, io_threads)  # files read at once (each in order, by one thread)
        self.digests: dict[str, str] = {}
        self.staged_bytes = 0  # bytes read through a host staging buffer into non-CPU destinations
        self._staging = threading.local()  # each reading thread's (pinned) host buffer, grown as needed

    def _host_destination(self, target: torch.Tensor, nbytes: int):
        """Where the tensor's bytes are read to, and how they then reach `target`: its own memory on the CPU;
        elsewhere a host buffer (page-locked for CUDA, so the copy runs at full PCIe speed) and a copy to it."""
        flat = target.reshape(-1).view(torch.uint8)
        if target.device.type == "cpu" and not self.stage_cpu:
            return memoryview(flat.numpy()).cast("B"), lambda: None
        buffer = getattr(self._staging, "buffer", None)
        if buffer is None or buffer.numel() < nbytes:
            pin = target.device.type == "cuda" and torch.cuda.is_available()
            buffer = self._staging.buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
        host = buffer[:nbytes]

        def finish() -> None:
            flat.copy_(host)  # synchronous: the buffer is reused for the next item
            self.staged_bytes += nbytes

        return memoryview(host.numpy()).cast("B"), finish

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        per_file: dict[str, dict] = defaultdict(dict)
        for request in plan.items:
            info = self.storage_data[request.storage_index]
            if info.transform_descriptors:
                return super().read_data(plan, planner)
            per_file[info.relative_path].setdefault((info.offset, info.length), []).append(request)
        if self.io_threads == 1 or len(per_file) == 1:
            for relative_path, items in per_file.items():
                self._read_file(relative_path, items, planner)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(self.io_threads, len(per_file)), thread_name_prefix="ddlc-read") as pool:
                for reading in [pool.submit(self._read_file, path, items, planner) for path, items in per_file.items()]:
                    reading.result()
        done: Future = Future()
        done.set_result(None)
        return done

    def _read_file(self, relative_path: str, items: dict, planner: LoadPlanner) -> None:
        path = self.fs.concat_path(self.path, relative_path)
        spans = sorted(items.items())  # [((offset, length), requests)] in file order
        hashing = relative_path in self.digest_names and _covers_without_overlap(spans)
        if hashing:
            spans = _with_gaps(spans, os.path.getsize(path))
        hasher = _Hasher(hashing)
        try:
            with open(path, "rb", buffering=0) as handle:
                # Let the kernel read the file ahead in the background while this thread decodes and copies.
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
                for (offset, length), requests in spans:
                    if len(requests) == 1 and length >= DIRECT_MIN_BYTES and requests[0].type != LoadItemType.BYTE_IO:
                        if self._read_direct(handle, path, offset, length, requests[0], planner, hasher):
                            continue
                    buffer = _read_exact(handle, path, offset, length)
                    data = memoryview(buffer.numpy()).cast("B")
                    hasher.add(data)
                    for request in requests:
                        _load_from_memory(request, data, buffer, planner)
        finally:
            digest = hasher.close()
        if digest is not None:
            self.digests[relative_path] = digest

    def _read_direct(self, handle, path: str, offset: int, length: int, request, planner: LoadPlanner,
                     hasher: _Hasher) -> bool:
        """Read one whole-tensor item into its destination; False (nothing consumed or loaded) when it does not
        qualify, and the caller reads it the ordinary way."""
        if sys.byteorder != "little":
            return False
        head = memoryview(_read_exact(handle, path, offset, EDGE_BYTES).numpy()).cast("B")
        tail_start = length - EDGE_BYTES
        tail = memoryview(_read_exact(handle, path, offset + tail_start, EDGE_BYTES).numpy()).cast("B")
        try:
            meta = torch.load(_MemoryFile({0: head, tail_start: tail}, length), map_location="meta",
                              weights_only=True)
        except _NotInMemory:
            return False
        if not isinstance(meta, torch.Tensor):
            return False
        storage = meta.untyped_storage()
        start = getattr(storage, "_checkpoint_offset", None)
        nbytes = meta.numel() * meta.element_size()
        target = planner.resolve_tensor(request).detach()
        qualifies = (
            isinstance(start, int) and 0 <= start and start + nbytes <= length and nbytes > 0
            and storage.nbytes() == nbytes and meta.storage_offset() == 0 and meta.is_contiguous()
            and all(o == 0 for o in request.storage_offsets) and tuple(request.lengths) == tuple(meta.size())
            and target.dtype == meta.dtype and target.is_contiguous()
            and tuple(target.size()) == tuple(meta.size())
        )
        if not qualifies:
            return False
        # The tensor's bytes [start, end) may begin inside the head and end inside the tail already read; the part
        # in between is read straight into the destination. Bytes between head and tail that are not the tensor's
        # (none, usually) are read for the digest.
        end = start + nbytes
        destination, finish = self._host_destination(target, nbytes)
        middle_start, middle_end = max(start, EDGE_BYTES), min(end, tail_start)
        if start < EDGE_BYTES:
            destination[:min(end, EDGE_BYTES) - start] = head[start:min(end, EDGE_BYTES)]
        if end > tail_start:
            destination[max(start, tail_start) - start:] = tail[max(start, tail_start) - tail_start:end - tail_start]
        if middle_start < middle_end:
            _readinto_exact(handle, path, offset + middle_start, destination[middle_start - start:middle_end - start])
        gap_before = _read_exact(handle, path, offset + EDGE_BYTES, start - EDGE_BYTES)
        gap_after = _read_exact(handle, path, offset + end, tail_start - end)
        hasher.add(head)
        hasher.add(memoryview(gap_before.numpy()).cast("B"))
        if middle_start < middle_end:
            hasher.add(destination[middle_start - start:middle_end - start])
        hasher.add(memoryview(gap_after.numpy()).cast("B"))
        hasher.add(tail)
        finish()
        planner.commit_tensor(request, target)
        return True


def _load_from_memory(request, data: memoryview, buffer: torch.Tensor, planner: LoadPlanner) -> None:
    if request.type == LoadItemType.BYTE_IO:
        planner.load_bytes(request, io.BytesIO(data.tobytes()))
        return
    tensor = torch.load(_MemoryFile({0: data}, len(data)), map_location="cpu", weights_only=True)
    tensor = narrow_tensor_by_index(tensor, request.storage_offsets, request.lengths)
    target = planner.resolve_tensor(request).detach()
    if target.size() != tensor.size():
        raise AssertionError(f"{request.storage_index}: stored size {tensor.size()} != expected {target.size()}")
    target.copy_(tensor)
    planner.commit_tensor(request, target)


def _read_exact(handle, path: str, offset: int, length: int) -> torch.Tensor:
    buffer = torch.empty(max(0, length), dtype=torch.uint8)  # uninitialised: no zero-fill pass
    if length > 0:
        _readinto_exact(handle, path, offset, memoryview(buffer.numpy()).cast("B"))
    return buffer


def _readinto_exact(handle, path: str, offset: int, view: memoryview) -> None:
    handle.seek(offset)
    filled = 0
    while filled < len(view):
        count = handle.readinto(view[filled:])
        if not count:
            raise EOFError(f"{path}: file ends at byte {offset + filled}, {len(view) - filled} bytes short of "
                           "what the checkpoint metadata lists")
        filled += count


def _covers_without_overlap(spans: list) -> bool:
    position = 0
    for (offset, length), _ in spans:
        if offset < position:
            return False
        position = offset + length
    return True


def _with_gaps(spans: list, size: int) -> list:
    """`spans` plus request-less spans for the bytes of the file they leave out, so that hashing sees them all."""
    out, position = [], 0
    for (offset, length), requests in spans:
        if offset > position:
            out.append(((position, offset - position), []))
        out.append(((offset, length), requests))
        position = offset + length
    if position < size:
        out.append(((position, size - position), []))
    return out
