"""Under torchrun (2 ranks): after a first save, one rank's state gains a tensor the other lacks. The next async
save must be skipped on every rank (its shares were planned for the old layout); the one after must be written
whole by every rank and committed."""

import json
import sys

import torch
import torch.distributed as dist

from ddlc.checkpoint import Checkpointer
from ddlc.runtime import hard_exit, init_distributed, wrap_model

out_dir = sys.argv[1]
ctx = init_distributed("cpu", "gloo")
torch.manual_seed(0)
model = wrap_model(torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)), ctx)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
model(torch.randn(4, 8)).sum().backward()
optimizer.step()

warnings = []
ckpt = Checkpointer(f"{out_dir}/ckpt", rank=ctx.rank, world_size=ctx.world_size, keep_last=5, warn=warnings.append)
ckpt.save(1, model, optimizer, {"step": 1}, blocking=False)
ckpt.wait()
if ctx.rank == 1:  # only this rank's optimizer state changes shape
    optimizer.state[next(iter(model.parameters()))]["rank1_only"] = torch.ones(3)
ckpt.save(2, model, optimizer, {"step": 2}, blocking=False)
ckpt.wait()
ckpt.save(3, model, optimizer, {"step": 3}, blocking=False)
ckpt.close()
with open(f"{out_dir}/rank{ctx.rank}.json", "w") as handle:
    json.dump({"committed": {s.step: s.committed for s in ckpt.history}, "errors": {s.step: s.error for s in ckpt.history},
               "warnings": warnings}, handle)
dist.barrier()
hard_exit(0)
