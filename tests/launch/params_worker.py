"""Training script for launch tests: train with ddlc's Trainer, then write this rank's full parameters.

    params_worker.py OUT_DIR CONFIG [overrides...] [--deepspeed ...]   ->  OUT_DIR/rank<N>.pt
"""

import os
import sys
import time
from pathlib import Path

import torch

from ddlc.config import load_config
from ddlc.runtime import Trainer, hard_exit, init_distributed, shutdown_distributed

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
out, config, overrides = Path(args[0]), args[1], [a for a in args[2:] if "=" in a and not a.startswith("--")]
cfg = load_config(config, overrides)
ctx = init_distributed(cfg.distributed.device, cfg.distributed.backend)
trainer = Trainer(cfg, ctx)
slow_while = os.environ.get("DDLC_TEST_SLOW_WHILE")
if slow_while:
    # Tests that must see something happen mid-job (a node rejoining) slow the steps while this file exists, so the
    # job cannot finish first on a fast or lightly loaded machine. Numerics are unchanged.
    train_step = trainer.train_step

    def slowed_step():
        if os.path.exists(slow_while):
            time.sleep(0.25)
        return train_step()

    trainer.train_step = slowed_step
result = trainer.fit()
state = trainer.full_state_dict()
out.mkdir(parents=True, exist_ok=True)
torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, out / f"rank{ctx.rank}.pt")
shutdown_distributed()
hard_exit(result.exit_code)  # 75 after a stop: an elastic agent then re-rendezvous
