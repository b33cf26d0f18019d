"""Commit markers: a checkpoint counts only once its COMMIT file exists, and COMMIT lists every file's size and
SHA-256, so `verify` can tell a complete checkpoint from a truncated or corrupted one."""

from __future__ import annotations

import hashlib
import json
import re
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

from ddlc import __version__
from ddlc.checkpoint.storage import CheckpointStore

FORMAT = "ddlc-checkpoint/1"
COMMIT = "COMMIT"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
STEP_DIR = re.compile(r"^step-(\d{8,})$")


def step_dir(step: int) -> str:
    return f"step-{step:08d}"


def parse_step(name: str) -> Optional[int]:
    match = STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def _size_and_sha256(store: CheckpointStore, relpath: str) -> dict:
    digest = hashlib.sha256()
    size = 0
    for chunk in store.iter_chunks(relpath):
        digest.update(chunk)
        size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _hash_threads(count: int) -> int:
    return max(1, min(count, os.cpu_count() or 1, 8))


def hash_files(store: CheckpointStore, directory: str, names: list[str]) -> dict[str, dict]:
    """{name: {size, sha256}} for files under `directory`, several files at once.

    hashlib and file reads release the GIL, so threads hash different files on different cores (and overlap
    reading one file with hashing another).
    """
    if len(names) <= 1:
        return {name: _size_and_sha256(store, f"{directory}/{name}") for name in names}
    with ThreadPoolExecutor(_hash_threads(len(names)), thread_name_prefix="ddlc-sha256") as pool:
        results = pool.map(lambda name: _size_and_sha256(store, f"{directory}/{name}"), names)
        return dict(zip(names, results))


@dataclass
class Manifest:
    step: int
    files: dict[str, dict]
    world_size: int
    created: float = field(default_factory=time.time)
    format: str = FORMAT
    ddlc_version: str = __version__
    extra: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.files.values())

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown checkpoint format {data.get('format')!r}")
        return cls(**data)


def read_manifest(store: CheckpointStore, directory: str) -> Optional[Manifest]:
    """The commit manifest of `directory`, or None when it is not committed (or the marker is unreadable)."""
    try:
        return Manifest.from_json(store.read_text(f"{directory}/{COMMIT}"))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None


@dataclass
class VerifyResult:
    directory: str
    ok: bool
    problems: list[str]

    def summary(self) -> str:
        return "ok" if self.ok else "; ".join(self.problems)


def verify(store: CheckpointStore, directory: str, check_hashes: bool = True) -> VerifyResult:
    """Check that `directory` is committed and every listed file has its recorded size (and SHA-256)."""
    manifest = read_manifest(store, directory)
    if manifest is None:
        return VerifyResult(directory, False, ["not committed (no valid COMMIT marker)"])
    present = {f.name: f.size for f in store.list_files(directory)}
    problems = []
    to_hash = []
    for name, info in sorted(manifest.files.items()):
        if name not in present:
            problems.append(f"{name}: missing")
        elif present[name] != info["size"]:
            problems.append(f"{name}: size {present[name]} != {info['size']} (truncated or overwritten)")
        elif check_hashes:
            to_hash.append(name)
    if to_hash:
        hashed = hash_files(store, directory, to_hash)
        problems += [f"{name}: sha256 mismatch (corrupted)" for name in to_hash
                     if hashed[name]["sha256"] != manifest.files[name]["sha256"]]
    return VerifyResult(directory, not problems, problems)
