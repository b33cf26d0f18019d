"""Resume: choose the newest checkpoint that verifies, load it on every rank, fall back only on corruption.

    rank 0: scan step dirs --read_commit--> committed ones, newest first by commit order (manifest.order)
            --sizes match?--> choice (or: none at all -> fresh start; only broken ones -> refuse, exit 2)
            --broadcast (load group)--> every rank:
    every rank: .metadata SHA-256 checked before anything unpickles it
            --> DCP load (reshards), SHA-256 of this rank's share of the files (from the bytes it loaded)
            --> all ranks' problems gathered: any corruption -> reject, choose again; else done

Only corruption (a size or SHA-256 mismatch, a file DCP cannot decode) makes resume load an older checkpoint. A
load that fails any other way (a storage error, a collective that outlasted the load group's timeout) raises
`CheckpointLoadError`: loading an older checkpoint in its place would silently throw away progress. Loads run on a
process group of their own, with `load_timeout_s` (long: a slow rank legitimately keeps the others waiting).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from ddlc.checkpoint.errors import CheckpointLoadError
from ddlc.checkpoint.manifest import METADATA, Manifest, check_file, hash_files, parse_step, read_commit, verify
from ddlc.checkpoint.state import balance_by_size
from ddlc.checkpoint.storage import CheckpointStore
from ddlc.errors import UserError


@dataclass
class Choice:
    """Rank 0's pick, broadcast to every rank."""

    directory: Optional[str] = None
    lineage: Optional[str] = None
    refusal: Optional[str] = None  # every committed checkpoint is broken: refuse to start over
    highest_seq: int = 0
    broken: dict = field(default_factory=dict)  # {name: problem} found while choosing
    error: Optional[str] = None  # the store could not be read at all


def choose(store: CheckpointStore, rejected: dict[str, str], warn: Callable[[str], None],
           after_step: Optional[int] = None) -> Choice:
    """Newest committed checkpoint (commit order) whose files have their recorded sizes, skipping `rejected`.

    `after_step` (the memory tier, memory_tier.py): only checkpoints of a later step count, and finding none that
    verifies is not a refusal (the caller falls back to the other tier)."""
    committed: list[tuple[str, Manifest]] = []
    unreadable: dict[str, str] = {}
    uncommitted: list[str] = []
    for name in store.list_dirs():
        if parse_step(name) is None or (after_step is not None and parse_step(name) <= after_step):
            continue
        commit = read_commit(store, name)
        if commit.manifest is not None:
            committed.append((name, commit.manifest))
        elif commit.reason:
            unreadable[name] = f"unreadable COMMIT: {commit.reason}"
        else:
            uncommitted.append(name)
    choice = Choice(highest_seq=max((m.seq for _, m in committed), default=0), broken=dict(rejected))
    for name, manifest in sorted(committed, key=lambda item: item[1].order, reverse=True):
        if name in rejected:
            continue
        result = verify(store, name, check_hashes=False, commit=None)
        if result.ok:
            choice.directory, choice.lineage = name, manifest.lineage
            break
        choice.broken[name] = result.summary()
        warn(f"skipping checkpoint {store.display(name)}: {result.summary()}")
    chosen_step = parse_step(choice.directory) if choice.directory else -1
    for name in sorted(uncommitted, reverse=True):
        if parse_step(name) > chosen_step:
            warn(f"skipping checkpoint {store.display(name)}: not committed (no COMMIT marker)")
    for name, reason in sorted(unreadable.items(), reverse=True):
        warn(f"skipping checkpoint {store.display(name)}: {reason}")
    if choice.directory is None and (committed or unreadable) and after_step is None:
        broken = {**choice.broken, **unreadable}
        listed = "; ".join(f"{name}: {reason}" for name, reason in sorted(broken.items(), reverse=True)[:3])
        choice.refusal = (
            f"every checkpoint under {store.display()} is corrupt or unreadable ({len(broken)}: {listed}); "
            "refusing to start over from step 0, which would discard the run's progress. Repair or restore one, "
            "or start a new run on purpose: --new-run, or checkpoint.resume=false (with "
            "checkpoint.on_existing=move_aside to keep these aside)")
    return choice


@dataclass
class VerifiedLoad:
    """Loads one checkpoint on every rank while SHA-256-checking this rank's share of its files."""

    store: CheckpointStore
    rank: int
    world_size: int
    group: Optional[object]
    io_threads: int
    load_timeout_s: float

    def load(self, directory: str, app_state: dict, check_hashes: bool) -> list[str]:
        """DCP-load `directory` into `app_state`; the corruption found (empty: loaded and verified)."""
        commit = read_commit(self.store, directory)
        manifest = commit.manifest
        early: list[str] = []
        if manifest is None:
            early = [f"unreadable COMMIT: {commit.reason}" if commit.reason else "not committed (no COMMIT marker)"]
        elif METADATA in manifest.files:  # DCP unpickles .metadata first: check it before anything decodes it
            problem = check_file(self.store, directory, manifest, METADATA)
            early = [problem] if problem else []
        # Each rank read COMMIT and .metadata itself (a flaky read, an eventually consistent listing): if one rank
        # stopped here while the others went into dcp.load's collectives, the job would hang. Agree first.
        if self.gather(early):
            return early
        share = self.verification_share(manifest) if check_hashes else []
        problems: list[str] = []
        reader = self.store.dcp_reader(directory, digest_names=frozenset(share), io_threads=self.io_threads)
        reader_digests: Optional[dict] = getattr(reader, "digests", None)
        checker = None
        if share and reader_digests is None:  # this reader cannot digest what it reads: hash alongside instead
            checker = threading.Thread(target=lambda: problems.extend(self.compare(directory, manifest, share)),
                                       daemon=True)
            checker.start()
        try:
            dcp.load(app_state, checkpoint_id=self.store.url(directory), storage_reader=reader,
                     process_group=self.group)
        except CheckpointException as exc:  # DCP gathers read/decode errors: every rank lands here together
            mismatch = shape_mismatch(exc)
            if mismatch:  # the model's settings changed since the save: the bytes are fine, the job is not
                raise UserError(
                    f"checkpoint {self.store.display(directory)} does not fit this model ({mismatch}): a model setting "
                    "changed since it was written. Resume with the settings it was written with (a checkpoint from "
                    "before vocabulary padding needs model.pad_vocab_to: 1), or start a new run") from None
            storage = storage_failure(exc)
            if storage:  # the same failures reach every rank, so every rank raises
                raise CheckpointLoadError(
                    f"loading {self.store.display(directory)} failed on a storage error ({storage}); this is not "
                    "treated as corruption, so no older checkpoint was loaded instead") from None
            problems.append(f"unreadable: {type(exc).__name__}: {_first_line(exc)}")
        except Exception as exc:  # a collective failed or timed out: not evidence of corruption
            raise CheckpointLoadError(
                f"loading {self.store.display(directory)} did not finish ({type(exc).__name__}: {_first_line(exc)}); "
                f"this is not treated as corruption, so no older checkpoint was loaded instead. If the load is "
                f"just slow, raise checkpoint.load_timeout_s (now {self.load_timeout_s:.0f}s)") from None
        if checker is not None:
            checker.join()
        elif share:
            read = {name: {"sha256": sha} for name, sha in reader_digests.items()}
            problems += self.compare(directory, manifest, [n for n in share if n not in read], already=read)
        return problems

    def verification_share(self, manifest: Manifest) -> list[str]:
        """This rank's files to SHA-256-check: largest first onto the least-loaded rank, the same on every rank."""
        owners = balance_by_size([(name, entry.size) for name, entry in sorted(manifest.files.items())],
                                 self.world_size)
        return [name for name, owner in owners.items() if owner == self.rank]

    def compare(self, directory: str, manifest: Manifest, names: list[str], already: Optional[dict] = None) -> list[str]:
        hashed = dict(already or {})
        hashed.update(hash_files(self.store, directory, names))
        return [f"{name}: sha256 mismatch (corrupted)" for name in sorted(hashed)
                if hashed[name]["sha256"] != manifest.files[name].sha256]

    def gather(self, problems: list[str]) -> list[str]:
        """Every rank's problems, on every rank (one small collective on the load group)."""
        if self.group is None or self.world_size == 1:
            return list(problems)
        gathered: list = [None] * self.world_size
        try:
            dist.all_gather_object(gathered, problems, group=self.group)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointLoadError(f"ranks could not compare their checks of the loaded checkpoint "
                                      f"({type(exc).__name__}: {_first_line(exc)})") from None
        return [p for rank_problems in gathered for p in rank_problems]


STORAGE_LIBRARIES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "urllib3")


def storage_failure(exc: CheckpointException) -> Optional[str]:
    """A description of the first failure that is the storage's (I/O error, S3 client error), not the bytes'."""
    from ddlc.checkpoint.write_digests import root_cause

    for rank, failure in sorted(exc.failures.items()):
        cause = failure[0] if isinstance(failure, tuple) else failure
        if not isinstance(cause, BaseException):
            continue
        cause = root_cause(cause)
        library = type(cause).__module__.split(".")[0]
        if (isinstance(cause, OSError) and not isinstance(cause, (FileNotFoundError, IsADirectoryError))) \
                or library in STORAGE_LIBRARIES:
            return f"rank {rank}: {type(cause).__name__}: {_first_line(cause)}"
    return None


def shape_mismatch(exc: CheckpointException) -> Optional[str]:
    """DCP's "Size mismatch between saved ... and current ... for <name>" (a changed model), if that is the failure."""
    from ddlc.checkpoint.write_digests import root_cause

    for failure in exc.failures.values():
        cause = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(cause, BaseException):
            text = _first_line(root_cause(cause))
            if text.startswith("Size mismatch between saved"):
                return text.replace("Size mismatch between saved", "saved", 1)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else ""
