"""Under torchrun: a 2-rank DDP model + AdamW saved by Checkpointer; records what each rank staged and wrote."""

import json
import sys

import torch
import torch.distributed as dist

from ddlc.checkpoint import Checkpointer
from ddlc.checkpoint.state import _plain_tensor_leaves, model_and_optimizer_state, share_of_replicated_state
from ddlc.runtime import hard_exit, init_distributed, wrap_model

out_dir = sys.argv[1]
ctx = init_distributed("cpu", "gloo")
torch.manual_seed(0)  # the same initial weights on every rank, as DDP requires
model = wrap_model(torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)), ctx)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
torch.manual_seed(1 + ctx.rank)  # different data per rank; DDP averages the gradients
model(torch.randn(4, 8)).sum().backward()
optimizer.step()

full = model_and_optimizer_state(model, optimizer)
share = share_of_replicated_state(full, ctx.rank, ctx.world_size)
mine = ["/".join(map(str, path)) for path, _ in _plain_tensor_leaves(share)]
everything = ["/".join(map(str, path)) for path, _ in _plain_tensor_leaves(full)]
ckpt = Checkpointer(f"{out_dir}/ckpt", rank=ctx.rank, world_size=ctx.world_size)
ckpt.save(7, model, optimizer, {"step": 7}, blocking=False)
ckpt.close()
with open(f"{out_dir}/rank{ctx.rank}.json", "w") as handle:
    json.dump({"mine": mine, "all": everything, "bytes": sum(t.numel() * t.element_size()
                                                            for _, t in _plain_tensor_leaves(share))}, handle)
if ctx.rank == 0:
    torch.save({"model": model.module.state_dict(), "optim": optimizer.state_dict()}, f"{out_dir}/expected.pt")
dist.barrier()
hard_exit(0)
