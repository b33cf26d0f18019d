"""The on-disk format of one checkpoint: its COMMIT marker (pydantic `Manifest`), written last by the committer and
read back by exactly one reader (`read_commit`), which every consumer uses (resume, retention, prune, the CLI).

    writer (commit.py)                         reader (read_commit)
    Manifest(step, files{name: size, sha256},  COMMIT bytes --(bounded read, UTF-8, JSON, same Manifest model)-->
             world_size, lineage, seq, ...)        CommitRead: committed (manifest) | uncommitted | unreadable (reason)
      .to_json() --> COMMIT                    verify(): manifest + listing (+ SHA-256) --> VerifyResult

A checkpoint counts only once COMMIT exists and reads; COMMIT lists every file's size and SHA-256, so `verify` can
tell a complete checkpoint from a truncated or corrupted one. A malformed COMMIT (a list, a directory, wrong field
types, non-UTF-8, huge numbers, names that leave the directory...) makes that one checkpoint "unreadable" with a
one-line reason; it never raises.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ddlc import __version__
from ddlc.checkpoint.storage import CheckpointStore

FORMAT = "ddlc-checkpoint/1"
COMMIT = "COMMIT"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
METADATA = ".metadata"  # DCP's pickled metadata: checked against COMMIT before anything unpickles it
STEP_DIR = re.compile(r"step-([0-9]{8,})")
MAX_COMMIT_BYTES = 64 << 20  # a manifest of 100k files is ~15 MB; anything bigger is not a COMMIT we wrote
MAX_STEP = 10**15
MAX_FILE_BYTES = 1 << 60


def step_dir(step: int) -> str:
    return f"step-{step:08d}"


def parse_step(name: str) -> Optional[int]:
    """The step of a checkpoint directory name (`step-00000120` -> 120); None for anything else."""
    match = STEP_DIR.fullmatch(name) if isinstance(name, str) and len(name) <= 40 else None
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


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    size: int = Field(ge=0, le=MAX_FILE_BYTES)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def _safe_name(name: str) -> str:
    """A file name inside the checkpoint directory: relative, no `..`, no empty or NUL parts."""
    parts = name.split("/")
    if (not name or len(name) > 1024 or name.startswith("/") or "\\" in name or "\x00" in name
            or any(part in ("", ".", "..") for part in parts) or name == COMMIT):
        raise ValueError(f"file name {name[:80]!r} is not a plain name inside the checkpoint directory")
    return name


class Manifest(BaseModel):
    """COMMIT: what a committed checkpoint holds. The committer builds it; `read_commit` validates with it."""

    model_config = ConfigDict(extra="forbid")

    step: int = Field(strict=True, ge=0, le=MAX_STEP)
    files: dict[str, FileEntry]
    world_size: int = Field(strict=True, ge=1, le=1 << 24)
    created: float = Field(default_factory=time.time)  # commit time (rank 0's clock)
    format: Literal["ddlc-checkpoint/1"] = FORMAT
    ddlc_version: str = Field(default=__version__, max_length=100)
    # trainer_state; and, kept here so that older ddlc versions still read the manifest: `lineage` (which run
    # wrote it: a fresh start makes a new one, a resume continues the one it loaded; absent: written before
    # lineages existed, counted as the current run's own) and `seq` (commit order in this URI: 1 + the highest seq
    # present when it was committed; absent: 0).
    extra: dict = Field(default_factory=dict)

    @field_validator("extra")
    @classmethod
    def _lineage_and_seq(cls, extra: dict) -> dict:
        lineage, seq = extra.get("lineage"), extra.get("seq", 0)
        if lineage is not None and not (isinstance(lineage, str) and re.fullmatch(r"[0-9A-Za-z_-]{1,64}", lineage)):
            raise ValueError("extra.lineage is not a lineage id")
        if type(seq) is not int or not 0 <= seq <= MAX_STEP:
            raise ValueError("extra.seq is not a commit sequence number")
        return extra

    @property
    def lineage(self) -> Optional[str]:
        return self.extra.get("lineage")

    @property
    def seq(self) -> int:
        return self.extra.get("seq", 0)

    @field_validator("files")
    @classmethod
    def _names_inside(cls, files: dict) -> dict:
        for name in files:
            _safe_name(name)
        return files

    @field_validator("created")
    @classmethod
    def _finite(cls, created: float) -> float:
        if not math.isfinite(created):
            raise ValueError("created is not a finite time")
        return created

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    @property
    def order(self) -> tuple:
        """Sort key for 'newer': commit order, then commit time, then step (never step alone)."""
        return (self.seq, self.created, self.step)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        return cls.model_validate(json.loads(text))


@dataclass
class CommitRead:
    """What `read_commit` found: `manifest` when committed; `reason` says why not (None: no COMMIT at all)."""

    directory: str
    manifest: Optional[Manifest] = None
    reason: Optional[str] = None

    @property
    def state(self) -> str:
        return "committed" if self.manifest is not None else ("unreadable" if self.reason else "uncommitted")


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "COMMIT"
    return f"{where}: {first.get('msg', 'invalid')}"[:200]


def parse_commit(data: bytes, directory: str) -> CommitRead:
    """Validate COMMIT bytes with the writer's model; never raises."""
    if len(data) > MAX_COMMIT_BYTES:
        return CommitRead(directory, reason=f"COMMIT is larger than {MAX_COMMIT_BYTES} bytes, more than any manifest "
                                            "ddlc writes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return CommitRead(directory, reason=f"COMMIT is not UTF-8 (byte {error.start})")
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as error:
        return CommitRead(directory, reason=f"COMMIT is not JSON: {str(error).splitlines()[0][:120]}")
    if not isinstance(raw, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
            type(raw), "null")
        return CommitRead(directory, reason=f"COMMIT holds {kind}, not an object")
    if raw.get("format", FORMAT) != FORMAT:
        return CommitRead(directory, reason=f"unknown checkpoint format {str(raw.get('format'))[:60]!r}")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as error:
        return CommitRead(directory, reason=f"COMMIT {_first_error(error)}")
    except (ValueError, TypeError, RecursionError) as error:
        return CommitRead(directory, reason=f"COMMIT: {str(error)[:160]}")
    if parse_step(directory) not in (None, manifest.step):
        return CommitRead(directory, reason=f"COMMIT says step {manifest.step}, the directory is {directory}")
    return CommitRead(directory, manifest=manifest)


def read_commit(store: CheckpointStore, directory: str) -> CommitRead:
    """The one reader of COMMIT: committed (with its manifest), uncommitted, or unreadable with a one-line reason."""
    try:
        data = store.read_bytes(f"{directory}/{COMMIT}", limit=MAX_COMMIT_BYTES + 1)
    except FileNotFoundError:
        return CommitRead(directory)
    except IsADirectoryError:
        return CommitRead(directory, reason="COMMIT is a directory, not a file")
    except Exception as error:  # noqa: BLE001 (permissions, storage errors: this checkpoint is unreadable, not the store)
        return CommitRead(directory, reason=f"COMMIT cannot be read: {type(error).__name__}: {str(error)[:160]}")
    return parse_commit(data, directory)


def read_manifest(store: CheckpointStore, directory: str) -> Optional[Manifest]:
    """The commit manifest of `directory`, or None when it is not committed or its COMMIT is unreadable."""
    return read_commit(store, directory).manifest


@dataclass
class VerifyResult:
    directory: str
    ok: bool
    problems: list[str]
    manifest: Optional[Manifest] = None

    def summary(self) -> str:
        return "ok" if self.ok else "; ".join(self.problems)


def verify(store: CheckpointStore, directory: str, check_hashes: bool = True,
           commit: Optional[CommitRead] = None) -> VerifyResult:
    """Check that `directory` is committed and every listed file has its recorded size (and SHA-256)."""
    commit = commit or read_commit(store, directory)
    manifest = commit.manifest
    if manifest is None:
        reason = f"unreadable COMMIT: {commit.reason}" if commit.reason else "not committed (no COMMIT marker)"
        return VerifyResult(directory, False, [reason])
    try:
        present = {f.name: f.size for f in store.list_files(directory)}
        problems = []
        to_hash = []
        for name, info in sorted(manifest.files.items()):
            if name not in present:
                problems.append(f"{name}: missing")
            elif present[name] != info.size:
                problems.append(f"{name}: size {present[name]} != {info.size} (truncated or overwritten)")
            elif check_hashes:
                to_hash.append(name)
        if to_hash:
            hashed = hash_files(store, directory, to_hash)
            problems += [f"{name}: sha256 mismatch (corrupted)" for name in to_hash
                         if hashed[name]["sha256"] != manifest.files[name].sha256]
    except Exception as error:  # noqa: BLE001 (a storage error reading this checkpoint: it does not verify)
        problems = [f"cannot be read: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"]
    return VerifyResult(directory, not problems, problems, manifest)


def check_file(store: CheckpointStore, directory: str, manifest: Manifest, name: str) -> Optional[str]:
    """None when `name` has its recorded size and SHA-256; else the problem (read before anything decodes it)."""
    entry = manifest.files.get(name)
    if entry is None:
        return f"{name}: not listed in COMMIT"
    try:
        got = _size_and_sha256(store, f"{directory}/{name}")
    except FileNotFoundError:
        return f"{name}: missing"
    if got["size"] != entry.size:
        return f"{name}: size {got['size']} != {entry.size} (truncated or overwritten)"
    if got["sha256"] != entry.sha256:
        return f"{name}: sha256 mismatch (corrupted)"
    return None
