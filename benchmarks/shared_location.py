#!/usr/bin/env python
"""What the start-up check that every rank shares the checkpoint location costs (target: under 1 s on local disk).

    python benchmarks/shared_location.py [--nproc 2] [--repeat 20] [--uri DIR_OR_S3_URI]

Re-launches itself under torchrun (gloo). Each repeat runs `verify_shared_location` (three small collectives plus
one probe file written with fsync per rank, read back by rank 0) next to a bare barrier for scale.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

from torchrun_self import relaunch_under_torchrun


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--uri", default=None, help="default: a fresh local temporary directory")
    return parser.parse_args()


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from ddlc.checkpoint.shared_location import verify_shared_location
    from ddlc.runtime import hard_exit, init_distributed, shutdown_distributed

    ctx = init_distributed("cpu", "gloo")
    uri = [args.uri or (tempfile.mkdtemp(prefix="ddlc-shared-") if ctx.is_main else None)]
    dist.broadcast_object_list(uri)
    checks, barriers = [], []
    for _ in range(args.repeat):
        dist.barrier()
        started = time.perf_counter()
        verify_shared_location(uri[0], ctx.rank, ctx.world_size, ctx.env.node_rank)
        checks.append(time.perf_counter() - started)
        started = time.perf_counter()
        dist.barrier()
        barriers.append(time.perf_counter() - started)
    dist.barrier()
    if ctx.is_main:
        if args.uri is None:
            shutil.rmtree(uri[0], ignore_errors=True)
        check, barrier = statistics.median(checks), statistics.median(barriers)
        print(f"workers: {ctx.world_size} | location {args.uri or 'local temporary directory'} | {args.repeat} repeats")
        print(f"bare barrier            : {barrier * 1000:8.2f} ms (median)")
        print(f"shared-location check   : {check * 1000:8.2f} ms median, {max(checks) * 1000:8.2f} ms max "
              f"({check / barrier if barrier else float('inf'):.0f}x a barrier)")
        print(f"start-up cost target < 1000 ms: {'met' if max(checks) < 1.0 else 'MISSED'}")
    shutdown_distributed()
    hard_exit(0)


if __name__ == "__main__":
    arguments = parse()
    if "RANK" in os.environ:
        worker(arguments)
    else:
        sys.exit(relaunch_under_torchrun(__file__, arguments.nproc))
