"""The training loop, readable in one sitting.

    corpus -> sampler -> GPT -> wrap (DDP/FSDP2) -> AdamW + schedule
    for step: for micro_step: forward/backward (sync on the last) -> clip -> optimizer -> schedule -> metrics
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from ddlc.config.loader import dump_config
from ddlc.config.schema import Config
from ddlc.runtime.data import GlobalBatchSampler, load_corpus, plan_batches
from ddlc.runtime.distributed import DistContext
from ddlc.runtime.metrics import MetricsLogger
from ddlc.runtime.model import GPT
from ddlc.runtime.optim import build_optimizer, build_scheduler
from ddlc.runtime.parallel import autocast_context, clip_and_measure, gradient_sync, wrap_model


@dataclass
class TrainState:
    """Progress that must survive a restart (checkpointed alongside model and optimizer)."""

    step: int = 0
    tokens_seen: int = 0


@dataclass
class TrainResult:
    run_name: str
    run_dir: str
    steps: int
    start_step: int
    first_loss: Optional[float]
    final_loss: Optional[float]
    tokens_per_second: float
    wall_time_s: float
    world_size: int
    strategy: str
    checkpoint_uri: Optional[str] = None
    extra: dict = field(default_factory=dict)


def resolve_run_name(cfg: Config, ctx: DistContext) -> str:
    """Use the configured name or make one on rank 0 and share it, so all ranks agree."""
    if cfg.monitoring.run_name:
        return cfg.monitoring.run_name
    name = [datetime.now(timezone.utc).strftime("run-%Y%m%d-%H%M%S") if ctx.is_main else None]
    if dist.is_initialized() and ctx.world_size > 1:
        dist.broadcast_object_list(name, src=0)
    return name[0]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Builds every component from a `Config` and runs the loop. Each piece is also usable on its own."""

    def __init__(self, cfg: Config, ctx: DistContext):
        self.cfg = cfg
        self.ctx = ctx
        train = cfg.training
        self.plan = plan_batches(train.micro_batch_size, train.global_batch_size, train.grad_accum_steps, ctx.world_size)
        self.corpus = load_corpus(cfg.data, cfg.model.block_size, cfg.model.vocab_size, train.seed)
        if cfg.model.vocab_size is None:
            cfg.model.vocab_size = self.corpus.vocab_size
        self.sampler = GlobalBatchSampler(self.corpus, self.plan, train.seed, cfg.data.shuffle)
        self.total_steps = train.max_steps or max(
            1, math.ceil(train.epochs * self.corpus.num_windows / self.plan.global_batch_size)
        )

        seed_everything(train.seed)  # same initial weights on every rank
        self.model = wrap_model(
            GPT(cfg.model), ctx, cfg.distributed.strategy, train.precision, cfg.distributed.fsdp.reshard_after_forward
        )
        torch.manual_seed(train.seed + ctx.rank)  # per-rank stream for dropout
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.optimizer, self.total_steps)
        self.state = TrainState()
        self.first_loss: Optional[float] = None
        self.final_loss: Optional[float] = None

        self.run_name = resolve_run_name(cfg, ctx)
        cfg.monitoring.run_name = self.run_name
        self.run_dir = Path(cfg.monitoring.run_dir) / self.run_name
        self.tokens_per_step = self.plan.global_batch_size * cfg.model.block_size

    # -- one optimizer step ----------------------------------------------------------------------------------
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward/backward over all micro-batches of this rank, then one optimizer update."""
        model, ctx, accum = self.model, self.ctx, self.plan.grad_accum_steps
        total_loss = torch.zeros((), device=ctx.device)
        for micro_step in range(accum):
            inputs, targets = self.sampler.batch(self.state.step, micro_step, ctx.rank)
            inputs = inputs.to(ctx.device, non_blocking=True)
            targets = targets.to(ctx.device, non_blocking=True)
            with gradient_sync(model, enabled=micro_step == accum - 1):
                with autocast_context(ctx, self.cfg.distributed.strategy, self.cfg.training.precision):
                    _, loss = model(inputs, targets)
                (loss / accum).backward()
            total_loss += loss.detach() / accum
        grad_norm = clip_and_measure(model, self.cfg.training.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        return total_loss, grad_norm

    # -- the loop --------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(cfg))
        start_step = self.state.step
        logger = MetricsLogger(
            self.run_dir,
            self.total_steps,
            enabled=ctx.is_main,
            progress=cfg.monitoring.progress,
            log_interval=cfg.training.log_interval,
            start_step=start_step,
        )
        logger.event(
            f"ddlc: run {self.run_name} | {ctx.world_size} x {ctx.device.type} ({ctx.backend}) | "
            f"{cfg.distributed.strategy} | {self.corpus.name}: {self.corpus.num_tokens:,} tokens | "
            f"global batch {self.plan.global_batch_size} x {cfg.model.block_size} tokens | "
            f"{sum(p.numel() for p in self.model.parameters()):,} params"
        )
        started = time.perf_counter()
        try:
            self.run_until(self.total_steps, logger)
        finally:
            logger.close()
        wall = time.perf_counter() - started
        steps_done = self.state.step - start_step
        result = TrainResult(
            run_name=self.run_name,
            run_dir=str(self.run_dir),
            steps=self.state.step,
            start_step=start_step,
            first_loss=self.first_loss,
            final_loss=self.final_loss,
            tokens_per_second=steps_done * self.tokens_per_step / wall if wall > 0 else 0.0,
            wall_time_s=wall,
            world_size=ctx.world_size,
            strategy=cfg.distributed.strategy,
        )
        if ctx.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(asdict(result), indent=2))
        return result

    def run_until(self, last_step: int, logger: MetricsLogger) -> None:
        """Train until `state.step == last_step`, logging every step (reduced once per log interval)."""
        interval = self.cfg.training.log_interval
        pending: list[tuple[int, float, float, torch.Tensor, torch.Tensor]] = []
        self.model.train()
        last = time.perf_counter()
        while self.state.step < last_step:
            lr = self.scheduler.get_last_lr()[0]
            loss, grad_norm = self.train_step()
            now = time.perf_counter()
            pending.append((self.state.step, lr, now - last, loss, grad_norm))
            last = now
            if self.state.step % interval == 0 or self.state.step == last_step:
                for record in self._reduce(pending):
                    self.first_loss = record["loss"] if self.first_loss is None else self.first_loss
                    self.final_loss = record["loss"]
                    logger.log(record)
                pending.clear()

    def _reduce(self, pending: list) -> list[dict]:
        """One collective per log interval: the global mean loss of every step in it."""
        losses = torch.stack([p[3] for p in pending]).float()
        if dist.is_initialized() and self.ctx.world_size > 1:
            dist.all_reduce(losses, op=dist.ReduceOp.SUM)
            losses /= self.ctx.world_size
        losses = losses.tolist()
        norms = torch.stack([p[4] for p in pending]).float().tolist()
        records = []
        for (step, lr, seconds, _, _), loss, norm in zip(pending, losses, norms):
            records.append(
                {
                    "step": step,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": norm,
                    "step_time_s": seconds,
                    "tokens_per_s": self.tokens_per_step / seconds if seconds > 0 else 0.0,
                    "tokens_seen": step * self.tokens_per_step,
                    "epoch": self.sampler.epoch_of_step(step),
                }
            )
        return records


def train(cfg: Config, ctx: DistContext) -> TrainResult:
    """Build a Trainer from `cfg` and run it to the end."""
    return Trainer(cfg, ctx).fit()
