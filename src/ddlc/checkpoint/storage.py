"""Where checkpoints live: a local directory, `file://`, or `s3://` (through fsspec/s3fs), behind one interface.

S3-compatible stores: set `AWS_ENDPOINT_URL` (or pass `endpoint_url`); requests then go to that endpoint.
"""

from __future__ import annotations

import os
import stat
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlparse

from ddlc.errors import UserError

SUPPORTED_SCHEMES = ("local path", "file://", "s3://")


class StorageError(UserError):
    """The checkpoint URI is malformed, unreachable or not writable (names the URI)."""


@dataclass(frozen=True)
class FileInfo:
    name: str  # relative to the checkpoint directory
    size: int


class CheckpointStore:
    """A root URI plus an fsspec filesystem. Paths passed around are relative to the root."""

    def __init__(self, uri: str, endpoint_url: Optional[str] = None):
        if not isinstance(uri, str) or not uri.strip():
            raise StorageError("checkpoint URI is empty: give a path, file:///path or s3://bucket/prefix")
        if "\x00" in uri:
            raise StorageError(f"checkpoint URI {uri!r}: contains a NUL byte")
        self.uri = uri.rstrip("/") or uri
        parsed = urlparse(uri)
        scheme = parsed.scheme.lower()
        if scheme in ("", "file"):
            import fsspec

            local = parsed.path if scheme == "file" else uri
            if scheme == "file" and parsed.netloc:
                raise StorageError(f"checkpoint URI {uri!r}: file:// URIs take an absolute path (file:///path)")
            self.scheme = "file"
            self.root = str(Path(local).expanduser().absolute())
            self.fs = fsspec.filesystem("file", auto_mkdir=True)
            self.storage_options: dict = {}
        elif scheme == "s3":
            if not parsed.netloc:
                raise StorageError(f"checkpoint URI {uri!r}: missing bucket name (s3://bucket/prefix)")
            try:
                import s3fs  # noqa: F401
            except ImportError:
                raise StorageError(f"checkpoint URI {uri!r}: s3:// needs s3fs (pip install 'ddlc[s3]')") from None
            import fsspec

            endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            self.scheme = "s3"
            self.root = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
            self.storage_options = {"endpoint_url": endpoint} if endpoint else {}
            # No listings cache, and an instance of its own: fsspec shares one cached S3FileSystem per process,
            # and its directory cache made a COMMIT that another rank wrote after this rank's last listing look
            # absent to open(), so ranks disagreed about a committed checkpoint (and one hung in DCP's collectives).
            self.fs = fsspec.filesystem("s3", use_listings_cache=False, skip_instance_cache=True,
                                        **self.storage_options)
        else:
            raise StorageError(
                f"checkpoint URI {uri!r}: unsupported scheme '{scheme}://' (use {', '.join(SUPPORTED_SCHEMES)})"
            )

    # -- paths ---------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if parts else self.root

    def url(self, *parts: str) -> str:
        """A URL DCP's fsspec writer/reader understands (s3://bucket/key) or a local path."""
        full = self.path(*parts)
        return f"s3://{full}" if self.scheme == "s3" else full

    def display(self, *parts: str) -> str:
        return self.url(*parts)

    # -- queries -------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        # s3fs caches listings; a checkpoint store is written by other processes, so never trust the cache.
        invalidate = getattr(self.fs, "invalidate_cache", None)
        if invalidate is not None:
            invalidate()

    def exists(self, *parts: str) -> bool:
        self.refresh()
        try:
            return self.fs.exists(self.path(*parts))
        except (PermissionError, OSError) as exc:
            raise StorageError(f"cannot access {self.display(*parts)}: {exc}") from None

    def list_dirs(self) -> list[str]:
        """Names of the directories directly under the root ([] if the root does not exist yet)."""
        self.refresh()
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        except (PermissionError, OSError) as exc:
            raise StorageError(f"cannot list checkpoint URI {self.uri}: {exc}") from None
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")

    def list_files(self, directory: str) -> list[FileInfo]:
        """Files under `directory` (recursively), with sizes, relative to it."""
        self.refresh()
        base = self.path(directory)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for name, info in found.items():
            if info.get("type") == "directory":
                continue
            rel = posixpath.relpath(name if self.scheme == "s3" else name, base)
            out.append(FileInfo(rel, int(info.get("size") or 0)))
        return sorted(out, key=lambda f: f.name)

    def size(self, *parts: str) -> int:
        return int(self.fs.size(self.path(*parts)))

    # -- reading and writing ---------------------------------------------------------------------------------
    def _readable(self, relpath: str) -> str:
        """The path to open for reading. Locally it must be a regular file: opening a FIFO (or a device) put in
        place of COMMIT or `latest` would block the reader forever (and `ddlc train` with it)."""
        path = self.path(relpath)
        if self.scheme == "file":
            mode = os.stat(path).st_mode  # FileNotFoundError as before
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(f"{path} is a directory")
            if not stat.S_ISREG(mode):
                raise OSError(f"{path} is not a regular file")
        return path

    def open(self, relpath: str, mode: str = "rb"):
        return self.fs.open(self._readable(relpath) if "r" in mode else self.path(relpath), mode)

    def read_text(self, relpath: str) -> str:
        with self.fs.open(self._readable(relpath), "rb") as handle:
            return handle.read().decode("utf-8")

    def read_bytes(self, relpath: str, limit: Optional[int] = None) -> bytes:
        """The file's bytes, at most `limit` of them (a reader of small files must not swallow a huge one)."""
        with self.fs.open(self._readable(relpath), "rb") as handle:
            return handle.read() if limit is None else handle.read(limit)

    def write_bytes_atomic(self, relpath: str, data: bytes) -> None:
        """Readers see the old content or the new, never a partial file.

        An S3 PUT is atomic by itself; on a filesystem, write a temporary sibling, fsync, then rename.
        """
        target = self.path(relpath)
        if self.scheme == "s3":
            self.fs.pipe_file(target, data)
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:  # a full disk or a directory in the way: leave no temporary file behind
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(os.path.dirname(target))

    def write_text_atomic(self, relpath: str, text: str) -> None:
        self.write_bytes_atomic(relpath, text.encode("utf-8"))

    def makedirs(self, *parts: str) -> None:
        if self.scheme == "file":
            os.makedirs(self.path(*parts), exist_ok=True)

    def remove_tree(self, directory: str) -> None:
        try:
            self.fs.rm(self.path(directory), recursive=True)
        except FileNotFoundError:
            pass
        self.refresh()

    def move(self, source: str, destination: str) -> None:
        """Rename within the root (a rename on a filesystem; copy then delete on S3)."""
        if self.scheme == "file":
            os.makedirs(os.path.dirname(self.path(destination)), exist_ok=True)
            os.replace(self.path(source), self.path(destination))
        else:
            # Object by object: s3fs's recursive mv also tries to copy the prefix itself (and its sub-prefixes) as
            # keys, which do not exist, and fails after copying part of it. Every copy first, then the deletes:
            # a failure leaves the source whole.
            src, dst = self.path(source), self.path(destination)
            keys = self.fs.find(src)  # every object under the prefix, or the object itself
            if not keys:
                raise FileNotFoundError(f"{self.display(source)} does not exist")
            for key in keys:
                self.fs.copy(key, dst if key == src else f"{dst}/{posixpath.relpath(key, src)}")
            self.fs.rm(keys)
        self.refresh()

    def iter_chunks(self, relpath: str, chunk_size: int = 8 << 20) -> Iterator[bytes]:
        with self.fs.open(self._readable(relpath), "rb") as handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    # -- DCP --------------------------------------------------------------------------------------------------
    def dcp_writer(self, directory: str, io_threads: int = 1):
        """A DCP storage writer for `directory` (reused for later saves through DCP's `checkpoint_id`); with
        `io_threads` > 1 each rank writes that many shard files in parallel."""
        if self.scheme == "s3":
            from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

            return FsspecWriter(self.url(directory), thread_count=io_threads, **self.storage_options)
        from torch.distributed.checkpoint import FileSystemWriter

        from ddlc.checkpoint.write_digests import HashingFileSystem

        writer = FileSystemWriter(self.path(directory), thread_count=io_threads)
        writer.fs = HashingFileSystem()  # shards are digested as they are written (see write_digests.py)
        return writer

    def dcp_reader(self, directory: str, digest_names: frozenset[str] = frozenset(), io_threads: int = 1):
        """A DCP storage reader for `directory`. Local readers also SHA-256 the files in `digest_names` from the
        bytes they decode (their `digests`) and read up to `io_threads` files at once; S3 readers have no
        `digests`: hash those files separately."""
        if self.scheme == "s3":
            from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

            return FsspecReader(self.url(directory), **self.storage_options)
        from ddlc.checkpoint.direct_read import DirectReader

        return DirectReader(self.path(directory), digest_names=digest_names, io_threads=io_threads)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
