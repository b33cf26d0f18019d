"""Read a small user-named file (hostfile, price table) without trusting what the name points at.

    path -> os.open(O_NONBLOCK) -> fstat: a directory is refused -> blocking again -> at most `limit` bytes

/dev/zero or a many-GB file stops at `limit` bytes (the caller says "over N bytes is not a ..."), and a FIFO is
read like a pipe (`--hostfile <(...)` passes /dev/fd/63) but never waited on: opened without blocking, a FIFO
nobody writes to reads as empty at once instead of hanging the command.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def read_at_most(path: Path | str, limit: int) -> bytes:
    """Up to `limit` bytes of `path`. OSError as open() raises it (IsADirectoryError for a directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        # A FIFO with a writer (even one still waiting in its open) blocks until data or EOF; without one
        # the read below returns EOF at once. Everything else reads as usual.
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            data = os.read(fd, min(left, 1 << 20))
            if not data:
                break
            chunks.append(data)
            left -= len(data)
        return b"".join(chunks)
    finally:
        os.close(fd)
