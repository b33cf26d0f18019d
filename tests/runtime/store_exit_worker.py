"""Worker for test_distributed_exit: rank 0 leaves at once; rank 1 still reads the job's store afterwards."""

import sys
import time

import torch.distributed as dist

from ddlc.runtime.distributed import hard_exit, init_distributed, shutdown_distributed

ctx = init_distributed("cpu", "gloo", timeout_s=60)
store = dist.distributed_c10d._get_default_store()
if ctx.env.rank == 0:
    store.set("outcome", "committed")
else:
    time.sleep(2)  # rank 0 is already shutting down: the store must still be there
    try:
        print("rank 1 read", store.get("outcome").decode(), flush=True)
    except Exception as exc:  # noqa: BLE001
        print("rank 1 lost the store:", type(exc).__name__, exc, file=sys.stderr, flush=True)
        hard_exit(3)
shutdown_distributed()
hard_exit(0)
