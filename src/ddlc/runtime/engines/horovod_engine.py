"""strategy=horovod: `hvd.DistributedOptimizer` around ddlc's AdamW, parameters and optimizer state broadcast from
rank 0, gradients averaged once per optimizer step (after the last accumulation micro-batch).

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
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
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

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def checkpointer(self, uri: str, **kwargs) -> Checkpointer:
        return Checkpointer(uri, **kwargs)  # plain module + torch optimizer: ddlc's DCP checkpoints as usual
