"""Worker for the optimizer-guard test: save with AdamW state, then resume the way Horovod used to on some ranks.

    torchrun --nproc_per_node=2 optimizer_guard_worker.py CKPT_DIR STALE_RANKS   (e.g. "1" or "" for none)

Stale ranks leave zero gradients on the parameters before resuming, so DCP loads no optimizer state on them.
"""

import sys

import torch

from ddlc.checkpoint.checkpointer import Checkpointer
from ddlc.checkpoint.optimizer_guard import OptimizerNotRestored, check_optimizer_restored, optimizer_state_entries
from ddlc.runtime import hard_exit, init_distributed, shutdown_distributed

ctx = init_distributed("cpu", "gloo")
stale = {int(r) for r in sys.argv[2].split(",") if r}


def model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


model, optimizer = model_and_optimizer()
model(torch.ones(2, 4)).sum().backward()
optimizer.step()
ckpt = Checkpointer(sys.argv[1], rank=ctx.rank, world_size=ctx.world_size)
ckpt.save(1, model, optimizer, {"step": 1, "optimizer_state_entries": optimizer_state_entries(optimizer)})
ckpt.close()

model, optimizer = model_and_optimizer()
if ctx.rank in stale:
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
ckpt = Checkpointer(sys.argv[1], rank=ctx.rank, world_size=ctx.world_size)
restored = ckpt.resume(model, optimizer)
print(f"rank {ctx.rank}: {optimizer_state_entries(optimizer)} entries restored", flush=True)
code = 0
try:
    check_optimizer_restored(optimizer, restored, ckpt.group, restored["checkpoint"])
except OptimizerNotRestored as error:
    print(f"rank {ctx.rank}: error: {error}", file=sys.stderr, flush=True)
    code = error.exit_code
ckpt.close()
shutdown_distributed()
hard_exit(code)
