"""torchrun worker for the non-finite guard: ddlc's real Trainer, with faults injected from the outside.

    POISON_STEPS=6,7 POISON_RANK=1   the loss on that rank is NaN at those steps (its gradients stay finite, so
                                     only an agreement between ranks makes every rank skip the update)
    BLOWUP_STEP=5                    before that step a parameter becomes inf (as a bad kernel or a bit flip would
                                     make it; the guard itself never applies a non-finite update)

Writes <out>/rank<N>.json: the steps this rank saw skipped, whether parameters and optimizer state stayed
bit-identical across each of them, and the exit code; <out>/rank<N>.pt: its final parameters (local shards).
"""

import json
import os
import sys
from pathlib import Path

import torch

from ddlc.config import load_config
from ddlc.errors import UserError
from ddlc.runtime import Trainer, hard_exit, init_distributed, shutdown_distributed

out = Path(sys.argv[1])
cfg = load_config(None, sys.argv[2:])
ctx = init_distributed("cpu", "gloo")
trainer = Trainer(cfg, ctx)
poison_steps = {int(s) for s in os.environ.get("POISON_STEPS", "").split(",") if s}
poison_rank = int(os.environ.get("POISON_RANK", "1"))
blowup_step = int(os.environ.get("BLOWUP_STEP", "0"))


def poison(_module, _inputs, output):
    if ctx.rank == poison_rank and trainer.state.step + 1 in poison_steps:
        logits, loss = output
        return logits, loss + float("nan")
    return output


trainer.model.register_forward_hook(poison)


def snapshot():
    tensors = [p.detach() for p in trainer.model.parameters()]
    tensors += [v for s in trainer.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return [(t.to_local() if hasattr(t, "to_local") else t).clone() for t in tensors]


report = {"skipped": [], "unchanged": [], "code": 0}
original_step = trainer.train_step


def train_step():
    if blowup_step and trainer.state.step + 1 == blowup_step:
        if trainer.checkpointer is not None:  # as the optimizer-step hook does: let an async save copy first
            trainer.checkpointer.wait_for_staging()
        with torch.no_grad():
            first = next(trainer.model.parameters())
            (first.to_local() if hasattr(first, "to_local") else first).view(-1)[0] = float("inf")
    before = snapshot()
    try:
        return original_step()
    finally:
        if trainer.last_skipped:
            after = snapshot()
            report["skipped"].append(trainer.state.step)
            report["unchanged"].append(len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after)))


trainer.train_step = train_step
try:
    trainer.fit()
except UserError as error:
    if ctx.rank == 0:
        print(f"error: {error}", file=sys.stderr, flush=True)
    report["code"] = error.exit_code
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{ctx.rank}.json").write_text(json.dumps(report))
torch.save([p.detach().cpu().clone() for p in snapshot()], out / f"rank{ctx.rank}.pt")
shutdown_distributed()
hard_exit(report["code"])
