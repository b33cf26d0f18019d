"""The training loop, readable in one sitting.

    corpus -> sampler -> GPT -> wrap (DDP/FSDP2) -> AdamW + schedule
    for step: for micro_step: forward/backward (sync on the last) -> clip -> finite? -> optimizer -> schedule
              -> validation loss every training.eval_interval steps and at the last (no_grad, eval mode,
                 held-out windows, mean over ranks; touches neither the RNG streams nor the data order)
              -> metrics
              -> checkpoint every checkpoint.interval_steps (storage), else every memory_interval_steps (host
                 memory, checkpoint/memory_tier.py); resume: the newest verified step of the two tiers

Non-finite guard: a step whose loss (on any rank) or global gradient norm is NaN/inf does not touch the
parameters or the optimizer state; all ranks agree through one tiny all-reduce. After
training.max_nonfinite_steps such steps in a row the job stops with DivergedError (exit 65). A checkpoint of
non-finite parameters is never written.
"""

from __future__ import annotations

import math
import os
import sys
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from ddlc.checkpoint.checkpointer import Checkpointer
from ddlc.checkpoint.errors import CheckpointSaveError
from ddlc.checkpoint.optimizer_guard import check_optimizer_restored, optimizer_state_entries
from ddlc.checkpoint.shared_location import verify_shared_location
from ddlc.config.loader import dump_config
from ddlc.config.schema import Config
from ddlc.errors import DivergedError, UserError
from ddlc.run_format import CONFIG_FILE, write_atomic, write_summary
from ddlc.runtime.data import GlobalBatchSampler, load_corpus, plan_batches, split_validation
from ddlc.runtime.distributed import DistContext
from ddlc.runtime.evaluation import evaluate
from ddlc.runtime.metrics import MetricsLogger
from ddlc.runtime.mfu import MfuMeter
from ddlc.runtime.model import GPT
from ddlc.runtime.optim import build_optimizer, build_scheduler
from ddlc.runtime.parallel import autocast_context, build_sharded, clip_and_measure, gradient_sync, wrap_model
from ddlc.runtime.precision import configure as configure_precision
from ddlc.runtime.preemption import PreemptionWatcher, let_the_agent_notice
from ddlc.runtime.run_identity import run_name
from ddlc.runtime.step_stats import DataWait, gpu_memory_peak_bytes, host_memory_peak_bytes
from ddlc.launch import run_files


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
    resumed_from: Optional[str] = None
    preempted: bool = False
    already_finished: bool = False  # resumed at (or past) its last step: nothing trained, nothing written
    # For cost and utilization views (ddlc dashboard, ddlc report): what the job ran on.
    instance_type: Optional[str] = None
    node: Optional[str] = None
    num_nodes: int = 1
    gpus: int = 0
    final_val_loss: Optional[float] = None  # the last validation loss (data.val_fraction > 0), else None
    extra: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """What the process should exit with: 75 (PREEMPTED_EXIT_CODE) after a stop on a signal or a peer's stop,
        else 0. Exit with it from your own script too: an elastic torchrun agent whose workers exit 0 counts the
        job as finished on that node, waits for the others and never joins the next rendezvous."""
        from ddlc.runtime.preemption import PREEMPTED_EXIT_CODE

        return PREEMPTED_EXIT_CODE if self.preempted else 0


def resolve_run_name(cfg: Config, ctx: Optional[DistContext] = None) -> str:
    """The configured name, else one derived from the config: every rank computes the same, every launch too."""
    return run_name(cfg)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Builds every component from a `Config` and runs the loop. Each piece is also usable on its own."""

    def __init__(self, cfg: Config, ctx: DistContext):
        self.cfg = cfg
        self.ctx = ctx
        self.run_name = resolve_run_name(cfg, ctx)
        cfg.monitoring.run_name = self.run_name
        train = cfg.training
        self.plan = plan_batches(train.micro_batch_size, train.global_batch_size, train.grad_accum_steps, ctx.world_size)
        self.corpus = load_corpus(cfg.data, cfg.model.block_size, cfg.model.vocab_size, train.seed)
        if cfg.model.vocab_size is None:
            cfg.model.vocab_size = self.corpus.vocab_size
        # The held-out tail of the corpus (data.val_fraction); the sampler never sees it.
        self.corpus, self.val_split = split_validation(self.corpus, cfg.data.val_fraction)
        self.sampler = GlobalBatchSampler(self.corpus, self.plan, train.seed, cfg.data.shuffle)
        self.total_steps = train.max_steps or max(
            1, math.ceil(train.epochs * self.corpus.num_windows / self.plan.global_batch_size)
        )

        self.run_name = resolve_run_name(cfg, ctx)
        cfg.monitoring.run_name = self.run_name
        self.run_dir = Path(cfg.monitoring.run_dir) / self.run_name
        self.checkpoint_uri = cfg.checkpoint.uri or str(self.run_dir / "checkpoints")
        if cfg.checkpoint.enabled:  # before the model is built: a location that is not shared stops every rank
            verify_shared_location(self.checkpoint_uri, ctx.rank, ctx.world_size, ctx.env.node_rank,
                                   cfg.checkpoint.endpoint_url)

        # auto -> bf16 on GPUs that have it, fp32 elsewhere; explicit bf16 on a V100 stops here (exit 2). TF32 on CUDA.
        train.precision = configure_precision(train.precision, ctx.device)

        seed_everything(train.seed)  # same initial weights on every rank
        self.engine = None  # DeepSpeed / Horovod own model, optimizer and gradient sync (ddlc.runtime.engines)
        if cfg.distributed.strategy in ("deepspeed", "horovod"):
            from ddlc.runtime.engines import build_engine

            if train.compile and ctx.is_main:
                self._warn(f"training.compile applies to ddp and fsdp; {cfg.distributed.strategy} runs eager")

            self.engine = build_engine(cfg, ctx, lambda: GPT(cfg.model), self.plan, self.total_steps)
            self.model, self.optimizer, self.scheduler = self.engine.model, self.engine.optimizer, self.engine.scheduler
            torch.manual_seed(train.seed + ctx.rank)
        else:
            fsdp = cfg.distributed.fsdp
            if cfg.distributed.strategy == "fsdp" and fsdp.meta_init:  # only this rank's shards are ever allocated
                self.model = build_sharded(lambda: GPT(cfg.model), ctx, torch.initial_seed(), train.precision,
                                           fsdp.reshard_after_forward)
            else:
                self.model = wrap_model(GPT(cfg.model), ctx, cfg.distributed.strategy, train.precision,
                                        fsdp.reshard_after_forward)
            if train.compile:
                from ddlc.runtime.compile import compile_in_place
                from ddlc.runtime.parallel import unwrap

                compile_in_place(unwrap(self.model), ctx.device, self._warn if ctx.is_main else lambda _: None)
            torch.manual_seed(train.seed + ctx.rank)  # per-rank stream for dropout
            self.optimizer = build_optimizer(self.model, cfg.optimizer)
            self.scheduler = build_scheduler(self.optimizer, cfg.optimizer, self.total_steps)
        # ZeRO-3 partitions parameters (numel() is 0 here); DeepSpeed keeps the full size in ds_numel.
        self.num_params = sum(getattr(p, "ds_numel", p.numel()) for p in self.model.parameters())
        self.mfu = MfuMeter.for_run(cfg.model, self.num_params, ctx.device, train.precision, ctx.world_size)
        self.state = TrainState()
        self.first_loss: Optional[float] = None
        self.final_loss: Optional[float] = None
        self.final_val_loss: Optional[float] = None
        self._val_losses: dict[int, float] = {}  # step -> validation loss, until that step's record is logged
        self.nonfinite_in_row = 0  # consecutive skipped steps (reset by a finite one)
        self.nonfinite_total = 0
        self.last_skipped = False

        self.tokens_per_step = self.plan.global_batch_size * cfg.model.block_size
        self.last_step = min(self.total_steps, train.stop_at_step or self.total_steps)

        self.checkpointer: Optional[Checkpointer] = None
        if cfg.checkpoint.enabled:
            make_checkpointer = self.engine.checkpointer if self.engine is not None else Checkpointer
            self.checkpointer = make_checkpointer(
                self.checkpoint_uri,
                rank=ctx.rank,
                world_size=ctx.world_size,
                keep_last=cfg.checkpoint.keep_last,
                keep_every=cfg.checkpoint.keep_every,
                commit_timeout_s=cfg.distributed.timeout_s,
                endpoint_url=cfg.checkpoint.endpoint_url,
                load_timeout_s=cfg.checkpoint.load_timeout_s,
                on_commit=self._on_checkpoint_commit,
                warn=lambda message: print(f"warning: {message}", file=sys.stderr, flush=True),
            )
        self.memory = self._memory_tier()
        self.instance_type = cfg.monitoring.instance_type or os.environ.get("DDLC_INSTANCE_TYPE")
        self.metrics = self._training_metrics()
        # Per-rank compute time up to the gradient all-reduce, for the straggler rule (DDP only; with an endpoint).
        self.compute_timer = None
        self.data_wait = DataWait()  # time in sampler.batch per step (step_stats.py)
        if self.metrics is not None and self.engine is None:
            from ddlc.runtime.compute_timer import ComputeTimer

            self.compute_timer = ComputeTimer(self.model, ctx.device)
        # Under a launcher that supervises us (torchrun's agent), its death is a stop request too (#12).
        self.preemption = PreemptionWatcher(ctx.world_size, watch_parent=ctx.env.launcher in ("torchrun", "deepspeed"))
        self.preempted = False
        self.resumed_from: Optional[str] = None

    @staticmethod
    def _warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def _memory_tier(self):
        """The host-memory tier (checkpoint/memory_tier.py) when checkpoint.memory_interval_steps is set."""
        ckpt, ctx = self.cfg.checkpoint, self.ctx
        if self.checkpointer is None or ckpt.memory_interval_steps is None:
            return None
        why_not = None
        if self.engine is not None:
            why_not = f"it supports ddp and fsdp, not {self.cfg.distributed.strategy}"
        elif ctx.env.num_nodes > 1 and not ckpt.memory_peer_replica:
            why_not = ("checkpoint.memory_peer_replica is false and this job has several nodes (a snapshot in one "
                       "node's memory is lost with the node; the peer replica keeps a copy on the next node)")
        if why_not:
            if ctx.is_main:
                self._warn(f"checkpoint.memory_interval_steps is set but the memory tier is off: {why_not}")
            return None
        from ddlc.checkpoint.memory_tier import MemoryTier, state_bytes

        tier = MemoryTier(ckpt.memory_dir, self.run_name, ckpt.memory_interval_steps, ctx.rank, ctx.world_size,
                          warn=self._warn, commit_timeout_s=self.cfg.distributed.timeout_s,
                          load_timeout_s=ckpt.load_timeout_s, local_world_size=ctx.env.local_world_size,
                          on_commit=lambda stats, tier="memory": self._on_checkpoint_commit(stats, tier))
        tier.check_fits(state_bytes(self.model, self.optimizer, ctx.world_size))  # every rank: same verdict
        return tier

    # -- monitoring -----------------------------------------------------------------------------------------
    def _training_metrics(self):
        """Per-rank Prometheus endpoint (monitoring.metrics_port + local rank), when a port is configured."""
        mon = self.cfg.monitoring
        if mon.metrics_port is None:
            return None
        from ddlc.monitor.training import TrainingMetrics, rank_metrics_port

        return TrainingMetrics(
            run=self.run_name,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            node=self.ctx.node,
            instance_type=self.instance_type,
            num_nodes=self.ctx.env.num_nodes,
            host=mon.metrics_host,
            port=rank_metrics_port(mon.metrics_port, self.ctx.local_rank),
            checkpoint_rpo_seconds=self.cfg.checkpoint.rpo_seconds,
            # Checkpointing off: ddlc_checkpoint_enabled 0, so DDLCCheckpointOverdue stays quiet for this run.
            checkpoint_enabled=self.checkpointer is not None,
            checkpoint_tiers=("storage",) + (() if self.memory is None else
                                             ("memory", "peer") if self.memory.replicated else ("memory",)),
            linger_s=mon.metrics_linger_s,
            log_interval=self.cfg.training.log_interval,
        )

    def _on_checkpoint_commit(self, stats, tier: str = "storage") -> None:
        # Runs on rank 0's commit thread (a peer copy: the node leader's replication thread); TrainingMetrics only
        # assigns numbers, so no lock is needed. Called for failed saves too (stats.committed False).
        if self.metrics is not None:
            self.metrics.observe_checkpoint(stats.step, stats.total_s or 0.0, stats.committed, time.time(), tier)

    # -- checkpoint state ------------------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        return {
            "step": self.state.step,
            "tokens_seen": self.state.tokens_seen,
            "samples_seen": self.sampler.samples_seen(self.state.step),
            "global_batch_size": self.plan.global_batch_size,
            "scheduler": self.scheduler.state_dict(),
            "run_name": self.run_name,
            "optimizer_state_entries": optimizer_state_entries(self.optimizer),
            # The run's cost so far, so a resumed run's cost continues (ddlc_run_cost_usd); None without metrics.
            "cost_usd": self.metrics.run_cost_usd() if self.metrics is not None else None,
            # Which windows are trained on: a resume with another split would train on what was held out.
            "val_fraction": self.cfg.data.val_fraction,
            # What was trained on: a resume that reads other data is said at start (data_change_note).
            "data": self.data_identity(),
        }

    def data_identity(self) -> dict:
        data = self.cfg.data
        return {"source": data.source, "path": data.path, "windows": self.corpus.num_windows,
                "seq_len": self.corpus.seq_len}

    def data_change_note(self, restored: dict) -> Optional[str]:
        """One line when the checkpoint was trained on other data than this run reads (another data.path, or the
        same path with other contents), else None. Not refused: continuing on new data can be on purpose; but
        the sample order then continues at a position that belonged to the old data."""
        saved, now = restored.get("data"), self.data_identity()  # absent in checkpoints written before it was kept
        if not isinstance(saved, dict) or saved == now:
            return None

        def said(identity: dict) -> str:
            where = identity.get("path") or f"{identity.get('source')} corpus"
            return f"{where} ({identity.get('windows'):,} sequences of {identity.get('seq_len')} tokens)"

        return (f"ddlc: warning: {restored['checkpoint']} was trained on {said(saved)}; this run reads {said(now)}. "
                f"Training continues from sample {restored['samples_seen']:,} of the new data's order")

    def resume(self) -> Optional[dict]:
        """Continue from the newest valid checkpoint, if any (model, optimizer, schedule, data, RNG)."""
        if self.checkpointer is None:
            return None
        if not self.cfg.checkpoint.resume:  # a new lineage: never mixed with another run's checkpoints
            self.checkpointer.start_fresh(self.cfg.checkpoint.on_existing)
            if self.memory is not None:
                self.memory.discard()
            return None
        # Leftover gradients (Horovod's broadcast_optimizer_state leaves zeros) make DCP think the optimizer is
        # initialised and load no optimizer state at all: start the load from a clean slate.
        for param in self.model.parameters():
            param.grad = None
        if self.engine is not None and hasattr(self.engine, "prepare_resume"):
            self.engine.prepare_resume()
        check_hashes = self.cfg.checkpoint.verify_on_resume == "sha256"
        restored, corrupt = None, {}
        if self.memory is not None:  # newer than storage's newest and verified, else storage
            restored = self.memory.resume(self.checkpointer, self.model, self.optimizer, check_hashes)
            if restored is not None:
                restored["checkpoint"] = f"memory tier {restored['checkpoint']}"
            else:
                corrupt = dict(self.memory.checkpointer._known_corrupt)
                self.memory.discard()  # older than storage's newest, or corrupt: never loaded
        if restored is None:
            restored = self.checkpointer.resume(self.model, self.optimizer, check_hashes=check_hashes)
        if restored is None and self.memory is not None and corrupt:
            # The corrupt snapshot was loaded before it was rejected: do not start over from its values.
            raise UserError(f"every memory-tier snapshot is corrupt ({'; '.join(sorted(corrupt))}) and storage "
                            f"holds no checkpoint; refusing to start over from step 0. Start a new run on purpose "
                            f"with checkpoint.resume=false")
        if restored is None:
            return None
        saved_fraction = restored.get("val_fraction")  # absent in checkpoints written before it was recorded
        if saved_fraction is not None and saved_fraction != self.cfg.data.val_fraction:
            raise UserError(
                f"data.val_fraction={self.cfg.data.val_fraction} but {restored['checkpoint']} was trained with "
                f"data.val_fraction={saved_fraction}: another split would train on held-out data and evaluate on "
                f"trained-on data. Resume with data.val_fraction={saved_fraction}, or start a new run "
                f"(checkpoint.resume=false or another checkpoint.uri)")
        check_optimizer_restored(self.optimizer, restored, self.checkpointer.group, restored.get("checkpoint", ""))
        self.state.step = restored["step"]
        self.state.tokens_seen = restored["tokens_seen"]
        self.scheduler.load_state_dict(restored["scheduler"])
        self.sampler.rebase(restored["step"], restored["samples_seen"])
        self.resumed_from = restored["checkpoint"]
        if self.metrics is not None:
            self.metrics.resumed(restored.get("cost_usd"))
        return restored

    def save_checkpoint(self, blocking: bool, final: bool = False, memory: bool = False) -> None:
        """A failed save is a warning (the previous commit stands), except the final one: CheckpointSaveError.
        A non-finite state is never saved (the final save then raises DivergedError). memory=True: a snapshot in
        the host-memory tier instead (always async)."""
        if self.checkpointer is None or self.checkpointer.last_step == self.state.step:
            return
        if memory and (self.memory is None or self.memory.checkpointer.last_step == self.state.step):
            return
        if self.nonfinite_total and isinstance(self.optimizer, torch.optim.Optimizer) and not self.optimizer.state:
            # Every step so far was skipped: no update exists to save, and DCP would have to invent optimizer state.
            if self.ctx.is_main:
                print(f"warning: step {self.state.step}: no update applied yet (every step was non-finite): "
                      "no checkpoint written", file=sys.stderr, flush=True)
            return
        if not self.state_is_finite():
            # A checkpoint of NaN/inf weights would become `latest` and push good ones out of retention.
            message = (f"parameters are not finite at step {self.state.step}: no checkpoint written; the newest good "
                       f"one stays (lower optimizer.lr, raise warmup_steps or set training.grad_clip)")
            if final:
                raise DivergedError(message)
            if self.ctx.is_main:
                print(f"warning: {message}", file=sys.stderr, flush=True)
            return
        try:
            if memory:
                self.memory.save(self.state.step, self.model, self.optimizer, self.trainer_state())
            else:
                self.checkpointer.save(self.state.step, self.model, self.optimizer, self.trainer_state(), blocking)
        except CheckpointSaveError as error:
            if final:
                raise
            if self.ctx.is_main:
                print(f"warning: {error}; training goes on", file=sys.stderr, flush=True)

    # -- the non-finite guard ----------------------------------------------------------------------------------
    def _agree_nonfinite(self, local_bad: torch.Tensor) -> bool:
        """True if any rank saw something non-finite (one all-reduce of a single number)."""
        flag = local_bad.to(self.ctx.device, torch.float32).reshape(())
        if dist.is_initialized() and self.ctx.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def step_is_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Whether every rank's loss and the gradient norm are finite (the same answer on every rank)."""
        bad = ~torch.isfinite(loss.detach().float()) | ~torch.isfinite(grad_norm.detach().float().to(loss.device))
        return not self._agree_nonfinite(bad)

    def state_is_finite(self) -> bool:
        """Every parameter (each rank's shard) and, for DDP/FSDP, every optimizer-state tensor is finite."""
        bad = torch.zeros((), dtype=torch.bool, device=self.ctx.device)
        # ZeRO-3 parameters are empty outside a forward pass; each rank's partition is in ds_tensor.
        tensors = [getattr(p, "ds_tensor", None) if p.numel() == 0 and hasattr(p, "ds_tensor") else p.detach()
                   for p in self.model.parameters()]
        tensors = [t for t in tensors if t is not None]
        if self.engine is None:
            tensors += [v for state in self.optimizer.state.values() for v in state.values()
                        if isinstance(v, torch.Tensor) and v.is_floating_point()]
        for tensor in tensors:
            tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # FSDP2 DTensor: own shard
            if tensor.numel():
                bad |= ~torch.isfinite(tensor).all().to(bad.device)
        return not self._agree_nonfinite(bad)

    def _count_step(self, finite: bool, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Count a skipped step; stop the job after max_nonfinite_steps of them in a row."""
        self.last_skipped = not finite
        if finite:
            self.nonfinite_in_row = 0
            return
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        limit = self.cfg.training.max_nonfinite_steps
        step = self.state.step + 1
        if self.ctx.is_main:
            skipped = "update skipped" if getattr(self.engine, "skips_nonfinite", True) else (
                "counted; this engine applied the update itself (see docs/configuration.md)")
            print(f"warning: step {step}: non-finite loss or gradient norm (loss {float(loss):.4g}, grad norm "
                  f"{float(grad_norm):.4g} on rank 0): {skipped} ({self.nonfinite_in_row} in a row, stop at "
                  f"{limit})", file=sys.stderr, flush=True)
        if self.nonfinite_in_row >= limit:
            first = step - self.nonfinite_in_row + 1
            raise DivergedError(
                f"training diverged: steps {first}-{step} ({self.nonfinite_in_row} in a row, "
                f"training.max_nonfinite_steps={limit}) had a non-finite loss or gradient norm; lower optimizer.lr, "
                f"raise optimizer.warmup_steps or set training.grad_clip, and resume from the newest checkpoint"
            )

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every model parameter and buffer, unsharded, on every rank (a collective under FSDP and ZeRO-3)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self.engine is not None:
            return self.engine.full_state_dict()
        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))

    # -- one optimizer step ----------------------------------------------------------------------------------
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward/backward over all micro-batches of this rank, then one optimizer update."""
        model, ctx, accum = self.model, self.ctx, self.plan.grad_accum_steps
        if self.engine is not None:
            step = self.state.step
            micro_batches = self.data_wait.iterate(self.sampler.batch(step, micro, ctx.rank) for micro in range(accum))
            total_loss, grad_norm, finite = self.engine.train_step(micro_batches, self.step_is_finite)
            self._count_step(finite, total_loss, grad_norm)
            self.scheduler.step()
            self.state.step += 1
            self.state.tokens_seen += self.tokens_per_step
            return total_loss, grad_norm
        total_loss = torch.zeros((), device=ctx.device)
        for micro_step in range(accum):
            inputs, targets = self.data_wait.fetch(self.sampler.batch, self.state.step, micro_step, ctx.rank)
            if ctx.device.type == "cuda":  # page-locked, so the copy below really overlaps (non_blocking)
                inputs, targets = inputs.pin_memory(), targets.pin_memory()
            inputs = inputs.to(ctx.device, non_blocking=True)
            targets = targets.to(ctx.device, non_blocking=True)
            with gradient_sync(model, enabled=micro_step == accum - 1):
                with autocast_context(ctx, self.cfg.distributed.strategy, self.cfg.training.precision):
                    _, loss = model(inputs, targets)
                (loss / accum).backward()
            total_loss += loss.detach() / accum
        grad_norm = clip_and_measure(model, self.cfg.training.grad_clip)
        finite = self.step_is_finite(total_loss, grad_norm)
        self._count_step(finite, total_loss, grad_norm)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        return total_loss, grad_norm

    # -- validation -------------------------------------------------------------------------------------------
    def eval_due(self, step: int, last_step: int) -> bool:
        if self.val_split is None:
            return False
        interval = self.cfg.training.eval_interval
        return step == last_step or (interval is not None and step % interval == 0)

    def evaluate(self) -> float:
        """The validation loss now (ddlc.runtime.evaluation): every rank calls it at the same steps."""
        return evaluate(self.model, self.val_split, self.plan, self.ctx, self.cfg.distributed.strategy,
                        self.cfg.training.precision, self.cfg.training.eval_batches)

    # -- the loop --------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        restored = self.resume()
        start_step = self.state.step
        if restored is not None and start_step >= self.last_step:
            return self._already_finished(start_step)
        if ctx.is_main:
            write_atomic(self.run_dir / CONFIG_FILE, dump_config(cfg))
            run_files.record_workers(self.run_dir)
            if restored is not None:
                # Steps after the checkpoint are trained again: their old records would be counted twice.
                run_files.truncate_metrics(self.run_dir / "metrics.jsonl", start_step)
            else:  # from step 0: records of an earlier start of this run go aside (kept), not before ours
                run_files.set_metrics_aside(self.run_dir / "metrics.jsonl")
        logger = MetricsLogger(
            self.run_dir,
            self.total_steps,
            enabled=ctx.is_main,
            progress=cfg.monitoring.progress,
            log_interval=cfg.training.log_interval,
            start_step=start_step,
        )
        if restored is not None:
            logger.event(f"ddlc: resuming run {self.run_name} from step {start_step}")
        else:
            logger.event(f"ddlc: starting run {self.run_name}")
        params = self.num_params
        logger.event(
            f"ddlc: run {self.run_name} | {ctx.world_size} x {ctx.device.type} ({ctx.backend}) | "
            f"{cfg.distributed.strategy} | {self.corpus.name}: {self.corpus.num_tokens:,} tokens | "
            f"global batch {self.plan.global_batch_size} x {cfg.model.block_size} tokens | "
            f"{params:,} params"
        )
        if restored is not None:
            logger.event(f"ddlc: resumed from {self.resumed_from} at step {self.state.step}")
            note = self.data_change_note(restored)
            if note:
                logger.event(note)
        started = time.perf_counter()
        try:
            try:
                self.run_until(self.last_step, logger)
                # The last step (and a preempted one) is always saved, synchronously, before we report success.
                self.save_checkpoint(blocking=True, final=True)
            except DivergedError:
                if self.checkpointer is not None:
                    self.checkpointer.close()  # an async save of an earlier, finite step still completes
                if self.memory is not None:
                    self.memory.close()
                raise
            if self.checkpointer is not None:
                self.checkpointer.close()
            if self.memory is not None:  # storage now holds the newest state: the snapshots are stale
                self.memory.close()
                self.memory.discard()
            if self.metrics is not None:
                # A clean end: ddlc_train_finished 1, and close() below lingers, except after a stop request (the
                # launcher's grace period is short, and it kills what is still running).
                self.metrics.finish(linger=not self.preempted)
        finally:
            self.preemption.close()
            logger.close()
            if self.metrics is not None and not self.metrics.finished:
                self.metrics.close()  # failed: the endpoint goes at once (DDLCTrainingRankDown)
        try:
            return self._result(start_step, started)
        finally:
            if self.metrics is not None:
                self.metrics.close()  # after monitoring.metrics_linger_s: the last step gets scraped

    def _result(self, start_step: int, started: float) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        if self.preempted and ctx.is_main:
            print(run_files.stopped_line(self.run_name, self.preemption.reason(), self.state.step), file=sys.stderr,
                  flush=True)
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
            checkpoint_uri=self.checkpointer.store.display() if self.checkpointer else None,
            resumed_from=self.resumed_from,
            preempted=self.preempted,
            instance_type=self.instance_type,
            node=ctx.node,
            num_nodes=ctx.env.num_nodes,
            gpus=ctx.world_size if ctx.device.type == "cuda" else 0,
            final_val_loss=self.final_val_loss,
        )
        mfu = self.mfu.ratio(result.tokens_per_second)
        result.extra.update(mfu=round(mfu, 4) if mfu is not None else "unknown", mfu_peak=self.mfu.peak.source)
        if ctx.is_main:
            write_summary(self.run_dir, asdict(result))  # validated with the readers' model, written atomically
            run_files.clear_workers(self.run_dir)
        if self.preempted and self.preemption.stopped_by_peer:
            let_the_agent_notice()
        return result

    def _already_finished(self, step: int) -> TrainResult:
        """Re-running a finished run: say so, and leave its summary, metrics, config and checkpoints as they are."""
        if self.checkpointer is not None:
            self.checkpointer.close()
        if self.memory is not None:
            self.memory.close()
        self.preemption.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.ctx.is_main:
            why = "training.stop_at_step" if self.last_step < self.total_steps else "training.max_steps"
            print(f"ddlc: run {self.run_name} is already finished: its checkpoint is at step {step} and {why} is "
                  f"{self.last_step}. Nothing to do (raise {why} to train on, or start over with another run name)",
                  flush=True)
        return TrainResult(
            run_name=self.run_name, run_dir=str(self.run_dir), steps=step, start_step=step, first_loss=None,
            final_loss=None, tokens_per_second=0.0, wall_time_s=0.0, world_size=self.ctx.world_size,
            strategy=self.cfg.distributed.strategy, resumed_from=self.resumed_from, already_finished=True,
            checkpoint_uri=self.checkpointer.store.display() if self.checkpointer else None,
        )

    def run_until(self, last_step: int, logger: MetricsLogger) -> None:
        """Train until `state.step == last_step`, logging every step (reduced once per log interval)."""
        interval = self.cfg.training.log_interval
        # (step, lr, seconds, loss, grad norm, skipped, compute-timer marks, data wait seconds)
        pending: list[tuple[int, float, float, torch.Tensor, torch.Tensor, bool, Any, float]] = []
        timer = self.compute_timer
        self.model.train()
        last = interval_started = time.perf_counter()
        while self.state.step < last_step:
            lr = self.scheduler.get_last_lr()[0]
            if timer is not None:
                timer.start_step()
            loss, grad_norm = self.train_step()
            now = time.perf_counter()
            marks = timer.end_step() if timer is not None else None
            pending.append((self.state.step, lr, now - last, loss, grad_norm, self.last_skipped, marks,
                            self.data_wait.take()))
            last = now
            if self.eval_due(self.state.step, last_step):
                self._val_losses[self.state.step] = self.final_val_loss = self.evaluate()
            stop = self.preemption.should_stop()
            if self.state.step % interval == 0 or self.state.step == last_step or stop:
                if self.ctx.device.type == "cuda":
                    # Host time between steps is only launch time on a GPU: wait for the device on log steps (only
                    # there) and give each step of the interval its share of the real elapsed time.
                    torch.cuda.synchronize(self.ctx.device)
                    now = time.perf_counter()
                    share = (now - interval_started) / len(pending)
                    pending = [(p[0], p[1], share, *p[3:]) for p in pending]
                    last = interval_started = now
                computes = [timer.seconds(p[6]) if timer is not None else None for p in pending]
                host_peak, gpu_peak = host_memory_peak_bytes(), gpu_memory_peak_bytes(self.ctx.device)
                for record, compute_s in zip(self._reduce(pending), computes):
                    record["peak_memory_bytes"] = gpu_peak if gpu_peak is not None else host_peak
                    self.first_loss = record["loss"] if self.first_loss is None else self.first_loss
                    self.final_loss = record["loss"]
                    logger.log(record)
                    if self.metrics is not None:
                        share = self.plan.micro_batch_size * self.plan.grad_accum_steps  # this rank's samples
                        self.metrics.observe_step(record["step"], record["loss"], record["lr"], record["grad_norm"],
                                                  record["step_time_s"], share * self.cfg.model.block_size, share,
                                                  mfu=record["mfu"], compute_seconds=compute_s,
                                                  tokens_seen=record["tokens_seen"],
                                                  data_wait_seconds=record["data_wait_s"],
                                                  host_memory_peak_bytes=host_peak,
                                                  gpu_memory_peak_bytes=gpu_peak,
                                                  val_loss=record.get("val_loss"))
                if self.metrics is not None:
                    self.metrics.publish()  # the rank endpoint serves this snapshot until the next log step
                pending.clear()
            if stop:
                self.preempted = True
                return
            ckpt = self.cfg.checkpoint
            if self.checkpointer is not None and self.state.step % ckpt.interval_steps == 0 and self.state.step < last_step:
                self.save_checkpoint(blocking=not ckpt.async_save)
            elif self.memory is not None and self.memory.due(self.state.step, ckpt.interval_steps) \
                    and self.state.step < last_step:
                self.save_checkpoint(blocking=False, memory=True)

    def _reduce(self, pending: list) -> list[dict]:
        """One collective per log interval: the global mean loss of every step in it."""
        losses = torch.stack([p[3] for p in pending]).float()
        if dist.is_initialized() and self.ctx.world_size > 1:
            dist.all_reduce(losses, op=dist.ReduceOp.SUM)
            losses /= self.ctx.world_size
        losses = losses.tolist()
        norms = torch.stack([p[4] for p in pending]).float().tolist()
        records = []
        for (step, lr, seconds, _, _, skipped, _, data_wait), loss, norm in zip(pending, losses, norms):
            records.append(
                {
                    **({"skipped": True} if skipped else {}),  # non-finite: no update was applied
                    "step": step,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": norm,
                    "step_time_s": seconds,
                    "tokens_per_s": self.tokens_per_step / seconds if seconds > 0 else 0.0,
                    "mfu": self.mfu.ratio(self.tokens_per_step / seconds) if seconds > 0 else None,
                    "tokens_seen": self.sampler.samples_seen(step) * self.cfg.model.block_size,
                    "epoch": self.sampler.epoch_of_step(step),
                    "data_wait_s": data_wait,  # this rank's (rank 0 writes the file)
                    **({"val_loss": self._val_losses.pop(step)} if step in self._val_losses else {}),
                }
            )
        return records


def train(cfg: Config, ctx: DistContext) -> TrainResult:
    """Build a Trainer from `cfg` and run it to the end."""
    return Trainer(cfg, ctx).fit()
