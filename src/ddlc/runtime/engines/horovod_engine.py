"""strategy=horovod: `hvd.DistributedOptimizer` around ddlc's AdamW, parameters broadcast from rank 0,
gradients averaged once per optimizer step (after the last accumulation micro-batch).

torch.distributed is initialised as well (see `horovod_rendezvous`), so ddlc's loss reduction and DCP checkpoints
work unchanged under horovodrun: only gradient sync goes through Horovod.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from ddlc.checkpoint.checkpointer import Checkpointer
from ddlc.errors import UserError
from ddlc.runtime.optim import build_optimizer, build_scheduler
from ddlc.runtime.parallel import autocast_context


def import_horovod():
    try:
        import horovod.torch as hvd
    except (ModuleNotFoundError, ImportError) as error:
        raise UserError(f"distributed.strategy=horovod needs Horovod built for this torch (make horovod): {error}") from None
    return hvd


def require_nccl_for_cuda(hvd, device: torch.device) -> None:
    """Refuse CUDA training with a Horovod built without NCCL: every gradient would go device -> host -> TCP ->
    host -> device (no NCCL, no EFA), many times slower than it should be."""
    if device.type == "cuda" and not hvd.nccl_built():
        raise UserError("distributed.strategy=horovod on CUDA needs Horovod built with NCCL, but this one is not "
                        "(hvd.nccl_built() is false): rebuild it with HOROVOD_GPU_OPERATIONS=NCCL "
                        "(scripts/build_horovod.sh --gpu), or use distributed.strategy=ddp")


class HorovodEngine:
    def __init__(self, cfg, ctx, model: torch.nn.Module, plan, total_steps: int):
        hvd = import_horovod()
        require_nccl_for_cuda(hvd, ctx.device)
        hvd.init()
        self.cfg, self.ctx, self.hvd = cfg, ctx, hvd
        self.accum = plan.grad_accum_steps
        self.model = model.to(ctx.device)
        optimizer = build_optimizer(self.model, cfg.optimizer)
        hvd.broadcast_parameters(self.model.state_dict(), root_rank=0)
        # No hvd.broadcast_optimizer_state: a new optimizer has no state to share (a resumed one is loaded from the
        # checkpoint on every rank), and that call "initialises" it with a zero-gradient step that decays the
        # weights once and leaves zero gradients behind, which made DCP restore no optimizer state (issue #13).
        self.optimizer = hvd.DistributedOptimizer(
            optimizer, named_parameters=self.model.named_parameters(), backward_passes_per_step=self.accum,
            op=hvd.Average,
        )
        self.scheduler = build_scheduler(self.optimizer, cfg.optimizer, total_steps)

    def train_step(self, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   is_finite: Callable[[torch.Tensor, torch.Tensor], bool]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        device = self.ctx.device
        total = torch.zeros((), device=device)
        for inputs, targets in micro_batches:
            with autocast_context(self.ctx, "horovod", self.cfg.training.precision):  # bf16 like DDP
                _, loss = self.model(inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True))
            (loss / self.accum).backward()  # Horovod all-reduces after the last of `accum` backward passes
            total += loss.detach() / self.accum
        self.optimizer.synchronize()  # averaged gradients are in place: clip them, then step without re-syncing
        clip = self.cfg.training.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip is not None else float("inf"))
        finite = is_finite(total, norm)  # agreed by every rank: a non-finite step leaves the state untouched
        if finite:
            with self.optimizer.skip_synchronize():
                self.optimizer.step()
        self.optimizer.zero_grad()  # Horovod's override takes no set_to_none (torch's default is True)
        return total, norm, finite

    def prepare_resume(self) -> None:
        """Give the optimizer the (zero) state that a checkpoint load fills in.

        DCP initialises an empty optimizer itself with `step()` and `zero_grad(set_to_none=True)`; Horovod's step
        would all-reduce and its zero_grad takes no argument. Here: a zero-lr step of the wrapped class (AdamW
        itself, no Horovod), after which the load overwrites every value.
        """
        optimizer = self.optimizer
        if any(optimizer.state.values()):
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        for param in params:
            param.grad = torch.zeros_like(param)
        lrs = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = 0.0
        try:
            super(type(optimizer), optimizer).step()  # Horovod's own pattern for "the wrapped optimizer's step"
        finally:
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr
            for param in params:
                param.grad = None

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def checkpointer(self, uri: str, **kwargs) -> Checkpointer:
        return Checkpointer(uri, **kwargs)  # plain module + torch optimizer: ddlc's DCP checkpoints as usual
