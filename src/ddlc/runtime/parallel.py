"""Data parallelism: DDP or FSDP2 (`fully_shard`), chosen by config, with one API for gradient-sync control."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ddlc.errors import UserError
from ddlc.runtime.distributed import DistContext


def wrap_model(
    model: nn.Module,
    ctx: DistContext,
    strategy: str = "ddp",
    precision: str = "fp32",
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Move `model` to the context's device and wrap it for data-parallel training. A model on the meta device
    (FSDP only) is sharded as it is; build_sharded materialises the shards."""
    if not _on_meta(model):
        model = model.to(ctx.device)
    elif strategy != "fsdp":
        raise ValueError("only FSDP2 shards a model built on the meta device")
    if strategy == "ddp":
        if ctx.world_size == 1:
            return model  # nothing to synchronise; avoid DDP's bucket bookkeeping
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp":
        return _fully_shard(model, ctx, precision, reshard_after_forward)
    raise UserError(
        f"distributed.strategy={strategy!r} needs its engine launcher (deepspeed/horovodrun); "
        "use 'ddp' or 'fsdp' under torchrun"
    )


def _fully_shard(model: nn.Module, ctx: DistContext, precision: str, reshard: bool) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    policy = MixedPrecisionPolicy()
    if precision == "bf16":
        # Params compute in bf16, gradients reduce in fp32: FSDP2 handles the casts, no autocast needed.
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    blocks = getattr(model, "blocks", None)
    if blocks is not None:
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    # The root keeps embeddings, final norm and the tied head; no reshard since backward needs it first.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return model


def _on_meta(model: nn.Module) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


def build_sharded(build: Callable[[], nn.Module], ctx: DistContext, seed: int, precision: str = "fp32",
                  reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2 without the whole model on any rank: build on the meta device (no memory), shard, allocate only this
    rank's shards on the device, and draw their initial values (model.init_weights: the same bits as a model built
    whole, one full parameter at a time)."""
    with torch.device("meta"):
        model = build()
    model = wrap_model(model, ctx, "fsdp", precision, reshard_after_forward)
    model.to_empty(device=ctx.device)
    model.init_weights(seed)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place and needs no unwrapping)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-steps; sync on the last one."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    set_sync = getattr(model, "set_requires_gradient_sync", None)  # FSDP2 modules
    if set_sync is not None:
        set_sync(enabled)
    yield


def autocast_context(ctx: DistContext, strategy: str, precision: str):
    """bf16 autocast for DDP on GPU (FSDP2 casts through its mixed-precision policy instead)."""
    if precision == "bf16" and strategy != "fsdp":
        return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clip_and_measure(model: nn.Module, max_norm: float | None) -> torch.Tensor:
    """Clip gradients to `max_norm` (if set) and return the global gradient norm as a local tensor."""
    norm = torch.nn.utils.clip_grad_norm_(
        model.parameters(), max_norm if max_norm is not None else float("inf"), foreach=True
    )
    full_tensor = getattr(norm, "full_tensor", None)  # DTensor under FSDP2
    return full_tensor() if full_tensor is not None else norm
