"""Validation loss on the held-out split (data.val_fraction; ddlc.runtime.data.split_validation).

    every rank: eval mode, no_grad -> training.eval_batches micro-batches of its own held-out windows
                -> mean loss -> all-reduce (mean over ranks) -> float; train mode restored

Eval mode means no dropout, so no random numbers are drawn and training's RNG streams are untouched; no_grad leaves
no gradients behind. Every rank runs the same number of forwards: FSDP2 and ZeRO-3 gather parameters collectively.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from ddlc.runtime.data import BatchPlan, WindowSlice, validation_batch
from ddlc.runtime.distributed import DistContext
from ddlc.runtime.parallel import autocast_context


def evaluate(model: torch.nn.Module, split: WindowSlice, plan: BatchPlan, ctx: DistContext, strategy: str,
             precision: str, batches: int) -> float:
    """Mean loss over `batches` held-out micro-batches per rank, averaged over all ranks."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=ctx.device)
    try:
        with torch.no_grad():
            for batch in range(batches):
                inputs, targets = validation_batch(split, plan, batch, ctx.rank)
                inputs, targets = inputs.to(ctx.device), targets.to(ctx.device)
                # DeepSpeed casts itself (its bf16 config); the others autocast as in training.
                autocast = (contextlib.nullcontext() if strategy == "deepspeed" else
                            autocast_context(ctx, strategy, precision))
                with autocast:
                    _, loss = model(inputs, targets)
                total += loss.detach().float()
    finally:
        model.train(was_training)
    total /= batches
    if dist.is_initialized() and ctx.world_size > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        total /= ctx.world_size
    return float(total)
