#!/usr/bin/env python
"""The host-memory checkpoint tier (#16): resume time from memory vs storage, and what the tier costs per step.

    python benchmarks/memory_tier.py resume [--nproc 2] [--rounds 5] [--layers 6] [--width 512] [--dir PATH] [--s3]
    python benchmarks/memory_tier.py overhead [--rounds 3] [--steps 200]

resume: re-launches itself under torchrun. One GPT (DDP) + AdamW state (weights and both moments) is committed once
to storage (a directory under --dir, default /tmp: this machine's disk) and once to the memory tier
(/dev/shm/ddlc-bench), through the same Checkpointer code, then loaded back each round, in rotating order:
  * memory tier: MemoryTier.resume (peek storage's newest commit, then the full verified DCP load from /dev/shm);
  * storage, cold: Checkpointer.resume after the page cache is dropped (a new node, or a long-gone page cache);
  * storage, warm: Checkpointer.resume with the files still in the page cache (a restart right after the save);
  * storage on s3:// (--s3): the same state committed to s3://ddlc-bench/... on a moto server (tests/support.py
    MotoServer) on 127.0.0.1, started by this script: S3's protocol and the boto3 client path, over loopback, NOT
    real S3 (no network latency or bandwidth limit; moto keeps objects in its own process's memory).
Every load SHA-256-checks its share of the files, as resume does by default. Max over ranks, medians of rounds.

overhead: the real trainer (train.py under torchrun, 2 workers) with checkpoint.memory_interval_steps=10 vs off,
the same model, batches and seeds, runs interleaved; mean step time over the steps after the first 10 of each run
(the metrics' step_time_s), storage checkpoints only at the end; and the median of the steps right after a snapshot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torchrun_self import from_rank0, gpt_after_one_step, relaunch_under_torchrun

REPO = Path(__file__).resolve().parents[1]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["resume", "overhead"])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--dir", default=None, help="storage directory parent (default: /tmp)")
    parser.add_argument("--s3", action="store_true", help="add a storage row on s3:// (a local moto server)")
    return parser.parse_args()


def drop_page_cache() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def resume_worker(args: argparse.Namespace, on_exit=None) -> None:
    """on_exit: called before the hard exit at the end (which skips any `finally` of the caller)."""
    import torch
    import torch.distributed as dist

    from ddlc.checkpoint import Checkpointer
    from ddlc.checkpoint.memory_tier import MemoryTier, state_bytes
    from ddlc.runtime import hard_exit, init_distributed, shutdown_distributed

    ctx = init_distributed("cpu", "gloo")
    rank, world = ctx.rank, ctx.world_size
    model, optimizer, batch = gpt_after_one_step(ctx, args.layers, args.width, args.vocab)
    nbytes = state_bytes(model, optimizer, world)

    def broadcast(value):
        return from_rank0(value, world)

    def barrier():
        if world > 1:
            dist.barrier()

    def max_over_ranks(seconds: float) -> float:
        value = torch.tensor([seconds], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return float(value.item())

    root = Path(broadcast(tempfile.mkdtemp(prefix="ddlc-tier-bench-", dir=args.dir) if rank == 0 else None))
    storage = Checkpointer(str(root / "storage"), rank=rank, world_size=world, keep_last=1)
    tier = MemoryTier("/dev/shm/ddlc-bench", root.name, 10, rank, world, warn=print, commit_timeout_s=600)
    state = {"step": 1}
    storage.save(1, model, optimizer, state, blocking=True)
    s3 = None
    if args.s3:
        s3 = Checkpointer(f"s3://ddlc-bench/{root.name}", rank=rank, world_size=world, keep_last=1,
                          endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        s3.save(1, model, optimizer, state, blocking=True)
    tier.checkpointer.save(10**6, model, optimizer, state, blocking=True)  # newer than storage's: resume takes it
    cold = [True]
    saves = [2]
    results: dict[str, list[float]] = {"memory": [], "storage_cold": [], "storage_warm": [], "save_memory": [],
                                       "save_storage": [], "held": [], "step_alone": [], "step_after_snapshot": [],
                                       **({"storage_s3": [], "save_s3": []} if s3 is not None else {})}

    def train_step() -> float:
        started = time.perf_counter()
        _, loss = model(batch, batch)
        loss.backward()
        optimizer.step()  # waits for the snapshot's staging copy, if it is still running
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    def snapshot_in_loop():
        """An async memory-tier snapshot at a step boundary, then the next training step: the loop is held for
        save() plus any wait for the staging copy (SaveStats.blocking_s); the write and commit go on behind."""
        barrier()
        results["step_alone"].append(max_over_ranks(train_step()))
        barrier()
        saves[0] += 1
        stats = tier.checkpointer.save(10**6 + saves[0], model, optimizer, state, blocking=False)
        seconds = train_step()
        results["step_after_snapshot"].append(max_over_ranks(seconds))
        tier.checkpointer.wait()
        results["held"].append(max_over_ranks(stats.blocking_s))

    def timed(name, load, drop=False):
        barrier()
        if rank == 0 and drop:
            cold[0] = drop_page_cache() and cold[0]
        barrier()
        started = time.perf_counter()
        restored = load()
        results[name].append(max_over_ranks(time.perf_counter() - started))
        assert restored is not None


    def timed_save(name, checkpointer):
        barrier()
        os.sync() if rank == 0 else None
        barrier()
        saves[0] += 1  # memory snapshots get steps above storage's: resume takes the memory tier
        step = saves[0] + (10**6 if checkpointer is tier.checkpointer else 0)
        started = time.perf_counter()
        checkpointer.save(step, model, optimizer, state, blocking=True)
        results[name].append(max_over_ranks(time.perf_counter() - started))

    phases = [
        snapshot_in_loop,
        lambda: timed_save("save_memory", tier.checkpointer),
        lambda: timed_save("save_storage", storage),
        lambda: timed("memory", lambda: tier.resume(storage, model, optimizer, True)),
        lambda: timed("storage_cold", lambda: storage.resume(model, optimizer), drop=True),
        lambda: timed("storage_warm", lambda: (storage.resume(model, optimizer), storage.resume(model, optimizer))[1]),
    ]
    if s3 is not None:
        phases += [lambda: timed("storage_s3", lambda: s3.resume(model, optimizer)),
                   lambda: timed_save("save_s3", s3)]
    for round_ in range(args.rounds):
        shift = round_ % len(phases)
        for phase in phases[shift:] + phases[:shift]:
            phase()
    # storage_warm timed two loads (the first warms the cache): halve it for one warm load (an upper bound).
    results["storage_warm"] = [s / 2 for s in results["storage_warm"]]
    storage.close()
    tier.close()
    if s3 is not None:
        s3.close()
    barrier()
    if rank == 0:
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"workers: {world} x cpu | state {nbytes / 1e6:.1f} MB (GPT {args.layers}x{args.width} + AdamW moments)"
              f" | {args.rounds} rounds, rotating order, medians | storage {root} | memory /dev/shm/ddlc-bench")
        print(f"storage cold reads: {'page cache dropped before each' if cold[0] else 'NOT cold (could not drop)'}")
        print(f"{'resume from':<34}{'seconds':>9}{'MB/s':>9}")
        for name, label in (("memory", "memory tier (/dev/shm)"), ("storage_cold", "storage, cold page cache"),
                            ("storage_warm", "storage, warm page cache (<=)"),
                            *([("storage_s3", "storage s3:// (moto, loopback)")] if s3 is not None else [])):
            print(f"{label:<34}{med[name]:9.3f}{nbytes / 1e6 / med[name]:9.0f}")
        print(f"{'save until committed':<34}")
        for name, label in (("save_memory", "memory tier (/dev/shm)"), ("save_storage", "storage (fsync to disk)"),
                            *([("save_s3", "storage s3:// (moto, loopback)")] if s3 is not None else [])):
            print(f"{label:<34}{med[name]:9.3f}{nbytes / 1e6 / med[name]:9.0f}")
        print(f"{'loop held by an async snapshot':<34}{med['held']:9.3f}  (save() + staging wait, SaveStats.blocking_s)")
        print(f"{'(reference) training step alone':<34}{med['step_alone']:9.3f}")
        print(f"{'(reference) step after a snapshot':<34}{med['step_after_snapshot']:9.3f}  (includes the held time;"
              " the write shares this machine's cores with the step)")
        print(f"{'speed-up memory vs storage cold':<34}{med['storage_cold'] / med['memory']:9.2f}x")
        print(f"{'speed-up memory vs storage warm':<34}{med['storage_warm'] / med['memory']:9.2f}x")
        if s3 is not None:
            print(f"{'speed-up memory vs s3 (moto)':<34}{med['storage_s3'] / med['memory']:9.2f}x")
        for name, values in results.items():
            print(f"  {name:<14}" + " ".join(f"{v:.3f}" for v in values))
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(Path("/dev/shm/ddlc-bench") / root.name, ignore_errors=True)
    barrier()
    shutdown_distributed()
    if on_exit is not None:
        on_exit()
    hard_exit(0)


def overhead(args: argparse.Namespace) -> None:
    python = sys.executable
    common = ["model.n_layer=2", "model.n_embd=128", "model.block_size=64", "data.synthetic_tokens=400000",
              "training.micro_batch_size=8", "training.global_batch_size=16", "training.log_interval=10",
              f"training.max_steps={args.steps}", f"checkpoint.interval_steps={args.steps}"]
    times: dict[str, list[float]] = {"off": [], "memory10": []}
    held: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ddlc-tier-overhead-") as tmp:
        for round_ in range(args.rounds):
            order = ["off", "memory10"] if round_ % 2 == 0 else ["memory10", "off"]
            for kind in order:
                name = f"{kind}-{round_}"
                extra = ["checkpoint.memory_interval_steps=10", f"checkpoint.memory_dir={tmp}/shm"] \
                    if kind == "memory10" else []
                cmd = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                       str(REPO / "train.py"), "--config", str(REPO / "config.yaml"), *common, *extra,
                       f"monitoring.run_dir={tmp}/runs", f"monitoring.run_name={name}", "monitoring.progress=plain"]
                env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                           PYTHONPATH=str(REPO / "src"))
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
                lines = Path(tmp, "runs", name, "metrics.jsonl").read_text().splitlines()
                steps = [json.loads(line) for line in lines if line.strip()][10:]
                # Mean, not median: a snapshot's cost lands on the few steps after it, which a median hides.
                times[kind].append(statistics.fmean(r["step_time_s"] for r in steps) * 1000)
                if kind == "memory10":
                    # Steps right after a snapshot (11, 21, ...): they carry the staging wait, if any.
                    after = [r["step_time_s"] * 1000 for r in steps if r["step"] % 10 == 1]
                    held.append(statistics.median(after))
    off, on = statistics.median(times["off"]), statistics.median(times["memory10"])
    print(f"trainer, {args.nproc} workers x cpu, GPT 2x128, 16x64 tokens/step, {args.steps} steps, "
          f"{args.rounds} rounds interleaved, median of per-run means")
    print(f"{'memory tier':<30}{'ms/step':>9}")
    print(f"{'off':<30}{off:9.2f}")
    print(f"{'memory_interval_steps=10':<30}{on:9.2f}")
    print(f"{'throughput ratio on/off':<30}{off / on:9.3f}")
    print(f"{'step right after a snapshot':<30}{statistics.median(held):9.2f}  (median; staging wait lands here)")
    print("  off      " + " ".join(f"{v:.2f}" for v in times["off"]))
    print("  memory10 " + " ".join(f"{v:.2f}" for v in times["memory10"]))


def main() -> int:
    args = parse()
    if args.mode == "overhead":
        overhead(args)
        return 0
    if "RANK" in os.environ:
        resume_worker(args)
        return 0
    server = None
    if args.s3:  # one endpoint for every worker, started here and stopped when they are done
        sys.path.insert(0, str(REPO))
        from tests.support import MotoServer

        server = MotoServer()
        server.create_bucket("ddlc-bench")
        os.environ.update(server.env)
    try:
        if args.nproc == 1:
            resume_worker(args, on_exit=server.stop if server is not None else None)
            return 0
        return relaunch_under_torchrun(__file__, args.nproc)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
