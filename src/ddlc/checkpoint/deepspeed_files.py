"""Checkpoints written by DeepSpeed (strategy=deepspeed) in ddlc's layout: consolidating their weights for
`ddlc checkpoints export`, and moving their files between a local directory and any checkpoint store.

DeepSpeed saves and loads with torch.save/torch.load on filesystem paths, so an s3:// checkpoint is staged in a
local directory on the way in and out. Its step directory holds, besides ddlc's trainer_state.json, RNG files
and COMMIT, DeepSpeed's own files: `mp_rank_00_model_states.pt` (module, or under ZeRO-3 one
`zero_pp_rank_N_mp_rank_00_model_states.pt` per rank) and one `*_optim_states.pt` per rank (ZeRO 1-3).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import torch

from ddlc.checkpoint.manifest import COMMIT, TRAINER_STATE
from ddlc.checkpoint.storage import CheckpointStore, StorageError

ENGINE = "deepspeed"


def checkpoint_engine(store: CheckpointStore, directory: str) -> str | None:
    """Which engine wrote the checkpoint ("deepspeed"), or None for ddlc's own DCP checkpoints."""
    try:
        state = json.loads(store.read_text(f"{directory}/{TRAINER_STATE}"))
    except (FileNotFoundError, ValueError):
        return None
    return state.get("engine")


def download(store: CheckpointStore, directory: str, local_root: Path, skip: Iterable[str] = ()) -> Path:
    """Copy the files of `directory` to `local_root/directory` (replacing what was there); return that path."""
    target = local_root / directory
    shutil.rmtree(target, ignore_errors=True)
    skipped = set(skip)
    for info in store.list_files(directory):
        if info.name == COMMIT or info.name in skipped:
            continue
        local = target / info.name
        local.parent.mkdir(parents=True, exist_ok=True)
        store.fs.get_file(store.path(directory, info.name), str(local))
    return target


def upload(local_dir: Path, store: CheckpointStore, directory: str) -> list[str]:
    """Copy every file under `local_dir` to `directory` in the store; return their names (relative, sorted)."""
    names = sorted(str(p.relative_to(local_dir)) for p in local_dir.rglob("*") if p.is_file())
    for name in names:
        store.fs.put_file(str(local_dir / name), store.path(directory, name))
    store.refresh()
    return names


def consolidated_weights(store: CheckpointStore, directory: str) -> dict[str, torch.Tensor]:
    """The full fp32 model weights of a DeepSpeed checkpoint (any ZeRO stage), as `{name: tensor}` on CPU."""
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ModuleNotFoundError:
        raise StorageError(f"{store.display(directory)} was written by DeepSpeed; exporting it needs DeepSpeed "
                           "(pip install 'ddlc[deepspeed]')") from None
    state = json.loads(store.read_text(f"{directory}/{TRAINER_STATE}"))
    with tempfile.TemporaryDirectory(prefix="ddlc-export-") as scratch:
        if store.scheme == "file":
            root = Path(store.path())
        else:
            root = Path(scratch)
            download(store, directory, root)
        if state.get("zero_stage", 0) == 0:
            # No ZeRO: DeepSpeed saved the whole module itself, there are no partitions to merge.
            saved = torch.load(root / directory / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
            return dict(saved["module"])
        # Its progress prints count parameters ("15 params"), ours counts tensors written, tied ones included:
        # keep one count on the screen (#13).
        with contextlib.redirect_stdout(io.StringIO()):
            return get_fp32_state_dict_from_zero_checkpoint(str(root), tag=directory)
