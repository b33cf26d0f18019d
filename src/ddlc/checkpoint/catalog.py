"""Inspecting and maintaining a checkpoint URI: list, show, verify, prune, export (the `ddlc checkpoints` verbs),
and the scan + plan + apply that retention after each commit shares with prune.

    store --list_dirs--> step dirs --read_commit (manifest.py)--> CommitRead --verify--> Entry (retention.py)
          --plan--> decisions --apply: repoint `latest` first, then delete--> store

Every checkpoint is read on its own: one malformed or unreadable checkpoint is reported as such (one line) and
never stops the others from being listed, verified, kept or pruned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from ddlc.checkpoint import retention
from ddlc.checkpoint.manifest import (
    LATEST,
    CommitRead,
    Manifest,
    parse_step,
    read_commit,
    read_manifest,  # noqa: F401 (re-exported for the CLI)
    step_dir,
    verify,
)
from ddlc.checkpoint.storage import CheckpointStore, StorageError

EXPORT_FORMATS = ("auto", "torch", "safetensors")
MAX_LATEST_BYTES = 4096


@dataclass
class CheckpointInfo:
    name: str
    step: int
    committed: bool
    manifest: Optional[Manifest]
    is_latest: bool
    reason: Optional[str] = None  # why the COMMIT is unreadable

    @property
    def state(self) -> str:
        return "committed" if self.committed else ("unreadable" if self.reason else "incomplete")

    @property
    def size_bytes(self) -> Optional[int]:
        return self.manifest.total_bytes if self.manifest else None


def open_store(uri: str, endpoint_url: Optional[str] = None, must_exist: bool = True) -> CheckpointStore:
    store = CheckpointStore(uri, endpoint_url)
    if must_exist and not store.exists():
        raise StorageError(f"checkpoint URI not found: {uri}")
    if store.scheme == "file" and Path(store.root).exists() and not Path(store.root).is_dir():
        # A file here would list as an empty store (exit 0) and hide a mistyped URI.
        raise StorageError(f"checkpoint URI is a file, not a directory: {uri}")
    return store


def latest_pointer(store: CheckpointStore, warn: Optional[Callable[[str], None]] = None) -> Optional[str]:
    """The checkpoint `latest` names, as a name inside the root only. A pointer that is not a plain step-directory
    name (`../x`, an absolute path, garbage, a directory) is ignored (None), with a warning."""
    try:
        raw = store.read_bytes(LATEST, limit=MAX_LATEST_BYTES)
    except FileNotFoundError:
        return None
    except Exception as error:  # noqa: BLE001 (a directory, permissions...: no usable pointer)
        if warn:
            warn(f"{store.display(LATEST)} cannot be read ({type(error).__name__}); ignored")
        return None
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        name = None
    if not name:
        return None
    if parse_step(name) is None:
        if warn:
            warn(f"{store.display(LATEST)} holds {name[:80]!r}, not a checkpoint name inside {store.display()}; "
                 "ignored")
        return None
    return name


def point_latest(store: CheckpointStore, name: Optional[str]) -> None:
    try:
        if name is None:
            store.fs.rm(store.path(LATEST))
        else:
            store.write_text_atomic(LATEST, name + "\n")
    except FileNotFoundError:
        pass
    except OSError as error:  # e.g. a directory named `latest`: say so, delete nothing it might protect
        raise StorageError(f"cannot update {store.display(LATEST)}: {error.strerror or error}") from None


def _step_dirs(store: CheckpointStore) -> list[tuple[str, int]]:
    return [(name, parse_step(name)) for name in store.list_dirs() if parse_step(name) is not None]


def memory_tier_of(store: CheckpointStore, rows: list[CheckpointInfo], memory_dir: str) -> Optional[CheckpointStore]:
    """The host-memory tier (memory_tier.py) of the run whose checkpoints `rows` are, on this node, if it has one:
    `<memory_dir>/<run name>`, the run named by its newest committed checkpoint (else by a `<run>/checkpoints`
    URI)."""
    names = [row.manifest.extra.get("trainer_state", {}).get("run_name") for row in rows if row.manifest]
    names = [name for name in names if isinstance(name, str) and name and "/" not in name and name not in (".", "..")]
    run = names[-1] if names else None
    if run is None and store.scheme == "file" and Path(store.root).name == "checkpoints":
        run = Path(store.root).parent.name
    if not run:
        return None
    tier = Path(memory_dir).expanduser().absolute() / run
    if not tier.is_dir() or not any(parse_step(child.name) is not None for child in tier.iterdir()):
        return None
    return CheckpointStore(str(tier))


def peer_copies_of(tier: CheckpointStore) -> list[tuple[str, CheckpointStore]]:
    """The copies of other nodes' snapshots this node holds for a multi-node run's memory tier (memory_tier.py:
    `<memory_dir>/<run>.peers/of-node-<i>`), as (node, store), by node."""
    peers = Path(tier.root).with_name(f"{Path(tier.root).name}.peers")
    if not peers.is_dir():
        return []
    copies = [child for child in peers.iterdir() if child.is_dir() and child.name.startswith("of-node-")]
    return [(child.name[len("of-node-"):], CheckpointStore(str(child)))
            for child in sorted(copies, key=lambda c: c.name)]


def list_checkpoints(store: CheckpointStore) -> list[CheckpointInfo]:
    latest = latest_pointer(store)
    rows = []
    for name, step in _step_dirs(store):
        commit = read_commit(store, name)
        rows.append(CheckpointInfo(name, step, commit.manifest is not None, commit.manifest, name == latest,
                                   commit.reason))
    return sorted(rows, key=lambda r: r.step)


def scan(store: CheckpointStore, check_hashes: bool = False, known: Optional[dict[str, str]] = None,
         known_good: Iterable[str] = ()) -> list[retention.Entry]:
    """Every step directory as a retention entry. `known`: {name: problem} already established (e.g. a SHA-256
    mismatch found at resume), counted as corrupt without reading again; `known_good`: just committed here."""
    known = known or {}
    good = set(known_good)
    entries = []
    for name, step in _step_dirs(store):
        commit: CommitRead = read_commit(store, name)
        manifest = commit.manifest
        if manifest is None:
            state = retention.UNREADABLE if commit.reason else retention.UNCOMMITTED
            entries.append(retention.Entry(name, step, state, problem=commit.reason))
            continue
        if name in known:
            problem = known[name]
        elif name in good:
            problem = None
        else:
            result = verify(store, name, check_hashes=check_hashes, commit=commit)
            problem = None if result.ok else result.summary()
        entries.append(retention.Entry(name, step, retention.CORRUPT if problem else retention.VERIFIED,
                                       order=manifest.order, lineage=manifest.lineage, problem=problem))
    return entries


def newest_verified(entries: list[retention.Entry], lineages: Optional[set] = None) -> Optional[retention.Entry]:
    verified = [e for e in entries if e.state == retention.VERIFIED and (lineages is None or e.lineage in lineages)]
    return max(verified, key=lambda e: e.order) if verified else None


def apply(store: CheckpointStore, entries: list[retention.Entry], decisions: list[retention.Decision],
          dry_run: bool = False) -> list[str]:
    """Delete what `decisions` say, after making sure `latest` names a checkpoint that stays (the newest verified
    one); `latest` never points at a deleted directory, even if this process dies half-way."""
    doomed = [d.entry.name for d in decisions if d.delete]
    if dry_run:
        return doomed
    kept = {e.name: e for e in entries if e.name not in set(doomed)}
    pointer = latest_pointer(store)
    target = newest_verified(list(kept.values()))
    pointed = kept.get(pointer) if pointer is not None else None
    if pointed is None or pointed.state != retention.VERIFIED:  # deleted, missing, or not loadable
        if target is not None:
            point_latest(store, target.name)  # raises (and nothing is deleted) if `latest` cannot be moved
        elif pointer is not None and pointed is None:
            point_latest(store, None)
    for name in doomed:
        store.remove_tree(name)
    return doomed


def resolve(store: CheckpointStore, which: Optional[str]) -> str:
    """`None`/`latest` -> the latest pointer (else the newest verified); `120` -> step-00000120; a name as is."""
    if which in (None, "latest"):
        pointer = latest_pointer(store)
        if pointer is not None and store.exists(pointer):
            return pointer
        newest = newest_verified(scan(store))
        if newest is None:
            raise StorageError(f"{store.display()}: no committed checkpoint that verifies")
        return newest.name
    if which.isascii() and which.isdigit() and len(which) <= 15:
        name = step_dir(int(which))
    else:
        name = which
    if parse_step(name) is None or not store.exists(name):
        raise StorageError(f"{store.display()}: no checkpoint named {which[:80]!r} (give a step, step-NNNNNNNN or "
                           "latest)")
    return name


def plan_on_proof(store: CheckpointStore, entries: list[retention.Entry], keep_last: int,
                  keep_every: Optional[int] = None, protect: Iterable[str] = (), own_lineages: Optional[set] = None,
                  proven: Optional[dict] = None) -> tuple[list[retention.Entry], list[retention.Decision]]:
    """retention.plan, but nothing is deleted on the strength of a checkpoint that only passed a size check.

    A size check cannot see a flipped byte. The newest `keep_last` verified checkpoints are what make deleting
    the others safe, so before anything is deleted those are SHA-256'd (each at most once: `proven` maps a name
    to the commit order it was proven at, and is updated), and a corrupt one is counted as such and the plan made
    again. `proven=None`: the entries' hashes were already checked. Returns (entries, decisions).
    """
    def plan(current):
        return retention.plan(current, keep_last, keep_every, protect=protect, own_lineages=own_lineages)

    decisions = plan(entries)
    while proven is not None and any(d.delete for d in decisions):
        mine = [e for e in entries if e.state == retention.VERIFIED
                and (own_lineages is None or e.lineage in own_lineages)]
        leaned_on = sorted(mine, key=lambda e: e.order, reverse=True)[:max(keep_last, 1)]
        corrupt = {}
        for entry in leaned_on:
            if proven.get(entry.name) == entry.order:
                continue
            result = verify(store, entry.name, check_hashes=True)
            if result.ok:
                proven[entry.name] = entry.order
            else:
                corrupt[entry.name] = result.summary()
        if not corrupt:
            break
        entries = [dataclasses.replace(e, state=retention.CORRUPT, problem=corrupt[e.name]) if e.name in corrupt
                   else e for e in entries]
        decisions = plan(entries)
    return entries, decisions


def prune(store: CheckpointStore, keep_last: int, keep_every: Optional[int] = None, dry_run: bool = False,
          check_hashes: bool = False) -> list[retention.Decision]:
    """Verify every checkpoint (sizes; SHA-256 with check_hashes), then delete what retention allows: never a
    checkpoint that would leave fewer than `keep_last` verified ones, never an unreadable one. Returns every
    decision (`delete` ones are done unless dry_run)."""
    if keep_last < 1:
        raise StorageError(f"--keep-last must be at least 1 (got {keep_last})")
    entries = scan(store, check_hashes=check_hashes)
    entries, decisions = plan_on_proof(store, entries, keep_last, keep_every, proven=None if check_hashes else {})
    apply(store, entries, decisions, dry_run)
    return decisions


def export(store: CheckpointStore, which: Optional[str], output: Path, fmt: str = "auto") -> tuple[str, int]:
    """Consolidate the model weights of one checkpoint into a single file for inference.

    `torch` writes a plain `{name: tensor}` dict (loads with `torch.load(..., weights_only=True)`); `safetensors`
    writes a .safetensors file. Returns (checkpoint name, number of tensors). Checkpoints written by DCP (ddp,
    fsdp, horovod) and by DeepSpeed (any ZeRO stage: its partitions are merged into full fp32 weights) both work.
    """
    import torch

    from ddlc.checkpoint import deepspeed_files

    if fmt not in EXPORT_FORMATS:
        raise StorageError(f"--format: {fmt[:40]!r} is not one of {', '.join(EXPORT_FORMATS)}")
    # The output is checked before the (possibly long) load, so a bad -o fails at once with one line.
    if output.is_dir():
        raise StorageError(f"--output: {output} is a directory; give a file name (.pt or .safetensors)")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"--output: cannot create {output.parent}: {error.strerror or error}") from None
    name = resolve(store, which)
    result = verify(store, name)  # every file's SHA-256 before anything is unpickled
    if not result.ok:
        raise StorageError(f"{store.display(name)} does not verify: {result.summary()}")
    if deepspeed_files.checkpoint_engine(store, name) == deepspeed_files.ENGINE:
        state = {"model": deepspeed_files.consolidated_weights(store, name)}
    else:
        state = _dcp_state(store, name)
    weights = {key: value.contiguous() for key, value in state["model"].items() if isinstance(value, torch.Tensor)}
    if fmt == "auto":
        fmt = "safetensors" if output.suffix == ".safetensors" else "torch"
    if fmt == "safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise StorageError("export to .safetensors needs the safetensors package") from None
    try:
        if fmt == "safetensors":
            # safetensors refuses shared storage (the tied embedding/head): store each tensor on its own.
            save_file({k: v.clone() for k, v in weights.items()}, str(output),
                      metadata={"source": store.display(name)})
        else:
            torch.save(weights, output)
    except Exception as error:  # noqa: BLE001 - torch (RuntimeError) and safetensors (SafetensorError) wrap OSError
        message = (getattr(error, "strerror", None) or str(error) or type(error).__name__).splitlines()[0]
        reason = message.rsplit("strerror: ", 1)[-1].rsplit("I/O error: ", 1)[-1][:200]
        raise StorageError(f"--output: cannot write {output}: {reason}") from None
    return name, len(weights)


def _dcp_state(store: CheckpointStore, name: str) -> dict:
    """Everything a DCP checkpoint holds, loaded in this one process."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict = {}
    _load_state_dict(state, storage_reader=store.dcp_reader(name), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    return state
