"""Training engines that own the model, optimizer and gradient sync themselves: DeepSpeed (ZeRO 1/2/3) and
Horovod. The Trainer drives them through the same small surface:

    engine.model / engine.optimizer / engine.scheduler
    engine.train_step(micro_batches, is_finite) -> (mean loss, grad norm, finite)
                                                                     # forward/backward/optimizer, sync included;
                                                                     # is_finite(loss, norm) agrees a skip on all ranks
    engine.full_state_dict()                                         # unsharded parameters on every rank
    engine.checkpointer(uri, **kwargs)                               # a Checkpointer that speaks the engine's format

DDP and FSDP2 stay in ddlc.runtime.parallel; these modules import their library only when chosen.
"""

from __future__ import annotations

from ddlc.errors import UserError


def build_engine(cfg, ctx, build, plan, total_steps):
    """`build()` makes the model: the engine decides where (DeepSpeed ZeRO-3 builds it partitioned)."""
    strategy = cfg.distributed.strategy
    if strategy == "deepspeed":
        from ddlc.runtime.engines.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(cfg, ctx, build, plan, total_steps)
    if strategy == "horovod":
        from ddlc.runtime.engines.horovod_engine import HorovodEngine

        return HorovodEngine(cfg, ctx, build(), plan, total_steps)
    raise UserError(f"distributed.strategy={strategy!r} has no engine; use ddp, fsdp, deepspeed or horovod")
