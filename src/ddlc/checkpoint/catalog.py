"""Inspecting and maintaining a checkpoint URI: list, show, verify, prune, export (the `ddlc checkpoints` verbs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ddlc.checkpoint.manifest import LATEST, Manifest, parse_step, read_manifest, step_dir, verify
from ddlc.checkpoint.retention import select_for_deletion
from ddlc.checkpoint.storage import CheckpointStore, StorageError


@dataclass
class CheckpointInfo:
    name: str
    step: int
    committed: bool
    manifest: Optional[Manifest]
    is_latest: bool

    @property
    def size_bytes(self) -> Optional[int]:
        return self.manifest.total_bytes if self.manifest else None


def open_store(uri: str, endpoint_url: Optional[str] = None, must_exist: bool = True) -> CheckpointStore:
    store = CheckpointStore(uri, endpoint_url)
    if must_exist and not store.exists():
        raise StorageError(f"checkpoint URI not found: {uri}")
    return store


def latest_pointer(store: CheckpointStore) -> Optional[str]:
    try:
        return store.read_text(LATEST).strip() or None
    except FileNotFoundError:
        return None


def list_checkpoints(store: CheckpointStore) -> list[CheckpointInfo]:
    latest = latest_pointer(store)
    rows = []
    for name in store.list_dirs():
        step = parse_step(name)
        if step is None:
            continue
        manifest = read_manifest(store, name)
        rows.append(CheckpointInfo(name, step, manifest is not None, manifest, name == latest))
    return sorted(rows, key=lambda r: r.step)


def resolve(store: CheckpointStore, which: Optional[str]) -> str:
    """`None`/`latest` -> the latest pointer; `120` -> step-00000120; a directory name as is."""
    if which in (None, "latest"):
        pointer = latest_pointer(store)
        if pointer is None:
            raise StorageError(f"{store.display()}: no committed checkpoint (no 'latest' pointer)")
        return pointer
    name = step_dir(int(which)) if which.isdigit() else which
    if parse_step(name) is None or not store.exists(name):
        raise StorageError(f"{store.display()}: no checkpoint named {which!r}")
    return name


def prune(store: CheckpointStore, keep_last: int, keep_every: Optional[int] = None, dry_run: bool = False) -> list[str]:
    rows = list_checkpoints(store)
    doomed = select_for_deletion(
        [r.step for r in rows if r.committed], [r.step for r in rows if not r.committed], keep_last, keep_every
    )
    names = [step_dir(s) for s in doomed]
    if not dry_run:
        for name in names:
            store.remove_tree(name)
    return names


def export(store: CheckpointStore, which: Optional[str], output: Path, fmt: str = "auto") -> tuple[str, int]:
    """Consolidate the model weights of one checkpoint into a single file for inference.

    `torch` writes a plain `{name: tensor}` dict (loads with `torch.load(..., weights_only=True)`); `safetensors`
    writes a .safetensors file. Returns (checkpoint name, number of tensors). Checkpoints written by DCP (ddp,
    fsdp, horovod) and by DeepSpeed (any ZeRO stage: its partitions are merged into full fp32 weights) both work.
    """
    from ddlc.checkpoint import deepspeed_files

    name = resolve(store, which)
    result = verify(store, name)
    if not result.ok:
        raise StorageError(f"{store.display(name)} does not verify: {result.summary()}")
    if deepspeed_files.checkpoint_engine(store, name) == deepspeed_files.ENGINE:
        state = {"model": deepspeed_files.consolidated_weights(store, name)}
    else:
        state = _dcp_state(store, name)
    weights = {key: value.contiguous() for key, value in state["model"].items() if isinstance(value, torch.Tensor)}
    if fmt == "auto":
        fmt = "safetensors" if output.suffix == ".safetensors" else "torch"
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise StorageError("export to .safetensors needs the safetensors package") from None
        # safetensors refuses shared storage (the tied embedding/head): store each tensor on its own.
        save_file({k: v.clone() for k, v in weights.items()}, str(output), metadata={"source": store.display(name)})
    else:
        torch.save(weights, output)
    return name, len(weights)


def _dcp_state(store: CheckpointStore, name: str) -> dict:
    """Everything a DCP checkpoint holds, loaded in this one process."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict = {}
    _load_state_dict(state, storage_reader=store.dcp_reader(name), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    return state
