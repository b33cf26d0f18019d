"""What goes into a checkpoint besides tensors: resharding-safe model/optimizer views, per-rank RNG streams, and the
stager that copies device tensors to host memory for an async save, ordered after the step that produced them."""

from __future__ import annotations

import hashlib
import io
import random
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict


def model_and_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Fully-qualified-name state dicts (DDP prefixes stripped, FSDP2 shards as DTensors): DCP can reshard them."""
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def _plain_tensor_leaves(tree: dict, prefix: tuple = ()) -> list[tuple[tuple, torch.Tensor]]:
    """(path, tensor) for every plain tensor in nested dicts; DTensors (FSDP shards) are each rank's own already."""
    from torch.distributed.tensor import DTensor

    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _plain_tensor_leaves(value, (*prefix, key))
        elif isinstance(value, torch.Tensor) and not isinstance(value, DTensor):
            out.append(((*prefix, key), value))
    return out


def _without(tree: dict, dropped: set, prefix: tuple = ()) -> dict:
    out = {}
    for key, value in tree.items():
        path = (*prefix, key)
        if isinstance(value, dict):
            kept = _without(value, dropped, path)
            if kept or not value:
                out[key] = kept
        elif path not in dropped:
            out[key] = value
    return out


def balance_by_size(items: list[tuple], world_size: int) -> dict:
    """{key: rank} for (key, size) items, largest first onto the least-loaded rank (ties: the lower key, the lower
    rank), so every rank computes the same assignment from the same items in the same order."""
    load = [0] * world_size
    owners = {}
    for key, size in sorted(items, key=lambda item: -item[1]):  # stable: equal sizes keep the given order
        owner = min(range(world_size), key=lambda r: (load[r], r))
        load[owner] += size
        owners[key] = owner
    return owners


def replicated_layout(state: dict) -> str:
    """A digest of the names, shapes and dtypes of the plain (non-DTensor) tensors in `state`."""
    leaves = sorted(_plain_tensor_leaves(state), key=lambda item: repr(item[0]))
    return hashlib.sha256(repr([(path, tuple(t.shape), str(t.dtype)) for path, t in leaves]).encode()).hexdigest()


def assign_replicated_share(state: dict, rank: int, world_size: int) -> dict:
    """The state this rank writes when every rank holds the same plain tensors (same `replicated_layout`): each
    of them kept by exactly one rank, largest first onto the least-loaded rank (the same choice on every rank)."""
    if world_size <= 1:
        return state
    leaves = sorted(_plain_tensor_leaves(state), key=lambda item: repr(item[0]))
    owners = balance_by_size([(path, t.numel() * t.element_size()) for path, t in leaves], world_size)
    return _without(state, {path for path, owner in owners.items() if owner != rank})


def layouts_agree(layout: str, world_size: int, group: Optional[object] = None) -> bool:
    """Whether every rank passed the same layout (one small collective)."""
    import torch.distributed as dist

    if world_size <= 1 or not dist.is_initialized():
        return True
    layouts: list = [None] * world_size
    dist.all_gather_object(layouts, layout, group=group)
    return len(set(layouts)) == 1


def share_of_replicated_state(state: dict, rank: int, world_size: int, group: Optional[object] = None) -> dict:
    """For a save: the state this rank writes, with each replicated (plain, non-DTensor) tensor kept by one rank.

    Under DDP every rank holds the same weights and moments. DCP would write each of them once anyway (its planner
    keeps one copy of keys that several ranks hold), but it stages every rank's full copy first. Splitting them
    beforehand, balanced by size, makes that copy 1/world_size as big; the checkpoint's contents and DCP metadata
    are the same. All ranks must hold the same tensor names, shapes and dtypes, which is checked (one small
    collective); when they do not, the state is returned whole. (`Checkpointer` checks once, then in the background.)
    """
    if world_size <= 1 or not layouts_agree(replicated_layout(state), world_size, group):
        return state
    return assign_replicated_share(state, rank, world_size)


def snapshot_buffers(state: dict, model: torch.nn.Module) -> None:
    """Replace, in a state from `model_and_optimizer_state`, the module's buffers with copies of their current values.

    An async save stages tensors while the next forward runs. Forward never writes parameters or optimizer state,
    but it may write buffers (BatchNorm running statistics, DDP's buffer broadcast): those are copied at once.
    """
    from torch.distributed.tensor import DTensor

    def local(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to_local() if isinstance(tensor, DTensor) else tensor

    buffer_pointers = {local(b).data_ptr() for b in model.buffers() if local(b).numel()}
    if not buffer_pointers:
        return
    model_state = state["model"]
    for key, value in model_state.items():
        if isinstance(value, torch.Tensor) and value.numel() and local(value).data_ptr() in buffer_pointers:
            model_state[key] = value.detach().clone()


def load_model_and_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA) generator states, encoded so `torch.load(weights_only=True)` reads them."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # The device this rank drives (each rank has one): restorable on any node, whatever its GPU count.
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible device's state; ours is ours
            index = torch.cuda.current_device()
            if index >= len(cuda):
                return
            cuda = cuda[index]
        torch.cuda.set_rng_state(cuda, torch.cuda.current_device())


def rng_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    return buffer.getvalue()


def load_rng_bytes(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)


# -- async staging, ordered after the device work that produced the state ------------------------------------------

def record_device_work() -> Optional[Any]:
    """An event recorded on the current CUDA stream (None on CPU, where every op has finished when it returns).

    The training loop only *queues* the optimizer step's kernels; an event recorded after them completes when
    they have run. Anything with a `synchronize()` method serves (tests use a slow stand-in stream)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream())
        return event
    return None


def make_stager(record: Optional[Callable[[], Optional[Any]]] = None, pinned: Optional[bool] = None):
    """The async stager for `Checkpointer`: copies into reused (pinned, on GPU hosts) host buffers on a background
    thread and its own CUDA stream, each copy starting only once the device work queued before `stage()` is done.

    torch's DefaultStager alone copies on its own stream without waiting for the compute stream, so it could read
    parameters and optimizer moments while the last optimizer step's kernels still run: a checkpoint mixing two
    steps, which would still pass its SHA-256 check (the hashes are of what was written).
    """
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    cuda = torch.cuda.is_available()

    class OrderedStager(DefaultStager):
        def stage(self, state_dict, **kwargs):
            ready = (record or record_device_work)()  # recorded here, on the caller's (compute) stream
            return super().stage(state_dict, ddlc_ready=ready, **kwargs)

        def _stage(self, state_dict, **kwargs):
            ready = kwargs.pop("ddlc_ready", None)
            if ready is not None:
                ready.synchronize()  # on the staging thread: the training loop goes on meanwhile
            return super()._stage(state_dict, **kwargs)

    return OrderedStager(StagingOptions(use_pinned_memory=cuda if pinned is None else pinned,
                                        use_shared_memory=False, use_async_staging=True,
                                        use_non_blocking_copy=cuda))
