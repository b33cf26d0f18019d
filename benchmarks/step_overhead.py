#!/usr/bin/env python
"""ddlc's training loop vs a minimal hand-written DDP loop: same model, same data, interleaved in one run.

    python benchmarks/step_overhead.py [--nproc 2] [--rounds 8] [--steps 25] [overrides...]

Re-launches itself under torchrun. Each round runs `--steps` steps of each loop (order alternating), timed
between barriers; the ratio of median step times is printed (>= 0.97 is the target).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from torchrun_self import relaunch_under_torchrun

DEFAULTS = [
    "model.n_layer=2",
    "model.n_embd=128",
    "model.block_size=64",
    "training.micro_batch_size=8",
    "training.global_batch_size=16",
    "training.log_interval=25",
    "training.max_steps=100000",
    "optimizer.warmup_steps=0",
    "optimizer.decay=constant",
    "monitoring.progress=plain",
]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("overrides", nargs="*")
    return parser.parse_args()


def launch(args: argparse.Namespace) -> int:
    return relaunch_under_torchrun(__file__, args.nproc)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ddlc.config import load_config
    from ddlc.runtime import GPT, MetricsLogger, Trainer, hard_exit, init_distributed, shutdown_distributed

    cfg = load_config(None, [*DEFAULTS, *args.overrides, "monitoring.run_name=bench"])
    ctx = init_distributed(cfg.distributed.device, cfg.distributed.backend)
    # One run directory for every rank, chosen by rank 0: the default checkpoint location lies under it, and
    # checkpoints must go to one place every rank shares (ddlc refuses to start otherwise).
    run_dir = [tempfile.mkdtemp(prefix="ddlc-bench-") if ctx.is_main else None]
    dist.broadcast_object_list(run_dir)
    cfg.monitoring.run_dir = run_dir[0]
    trainer = Trainer(cfg, ctx)
    logger = MetricsLogger(trainer.run_dir, trainer.total_steps, enabled=ctx.is_main, progress="plain",
                           log_interval=10**9)

    # The baseline: what a person writes by hand with the same model, optimizer settings and batches.
    torch.manual_seed(cfg.training.seed)
    plain = GPT(cfg.model).to(ctx.device)
    plain = DistributedDataParallel(plain) if ctx.world_size > 1 else plain
    optimizer = torch.optim.AdamW(plain.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay,
                                  betas=cfg.optimizer.betas, foreach=True)
    sampler = trainer.sampler
    plain_step = [0]

    def run_plain(n: int) -> None:
        for _ in range(n):
            x, y = sampler.batch(plain_step[0], 0, ctx.rank)
            _, loss = plain(x.to(ctx.device), y.to(ctx.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(plain.parameters(), cfg.training.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            plain_step[0] += 1
        loss.item()

    def run_ddlc(n: int) -> None:
        trainer.run_until(trainer.state.step + n, logger)

    def timed(fn, n: int) -> float:
        dist.barrier()
        start = time.perf_counter()
        fn(n)
        dist.barrier()
        return (time.perf_counter() - start) / n

    timed(run_plain, args.warmup)
    timed(run_ddlc, args.warmup)
    ddlc_times, plain_times = [], []
    for round_ in range(args.rounds):
        order = [(run_ddlc, ddlc_times), (run_plain, plain_times)]
        for fn, sink in order if round_ % 2 == 0 else reversed(order):
            sink.append(timed(fn, args.steps))
    logger.close()
    if trainer.checkpointer is not None:
        trainer.checkpointer.close()  # the last async save ends before its directory goes
    dist.barrier()
    if ctx.is_main:
        shutil.rmtree(run_dir[0], ignore_errors=True)
        d, p = statistics.median(ddlc_times), statistics.median(plain_times)
        tokens = trainer.tokens_per_step
        print(f"workers: {ctx.world_size} x {ctx.device.type} | {args.rounds} rounds x {args.steps} steps, interleaved")
        print(f"plain DDP loop : {p * 1000:8.2f} ms/step  {tokens / p:12,.0f} tokens/s")
        print(f"ddlc loop      : {d * 1000:8.2f} ms/step  {tokens / d:12,.0f} tokens/s")
        print(f"throughput ratio ddlc/plain: {p / d:.3f}  (target >= 0.97)")
    shutdown_distributed()
    hard_exit(0)


if __name__ == "__main__":
    arguments = parse()
    if "RANK" in os.environ:
        worker(arguments)
    else:
        sys.exit(launch(arguments))
