"""A small tmpfs standing in for a node's /dev/shm, for the memory tier's out-of-room tests (needs root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def mount_tmpfs(directory: Path, size: str) -> None:
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")


def fill(directory: Path) -> None:
    """Write a file into `directory` until its filesystem is full."""
    block = b"\0" * (64 << 10)
    with open(directory / "filler", "wb") as handle:
        try:
            while True:
                handle.write(block)
                handle.flush()
        except OSError:
            pass
