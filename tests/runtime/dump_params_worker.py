"""Worker for tests: train through the library API, then save this rank's full parameters to <out>/rank<N>.pt."""

import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from ddlc.config import load_config
from ddlc.runtime import Trainer, hard_exit, init_distributed, shutdown_distributed

out = Path(sys.argv[1])
cfg = load_config(sys.argv[2], sys.argv[3:])
ctx = init_distributed(cfg.distributed.device, cfg.distributed.backend)
trainer = Trainer(cfg, ctx)
result = trainer.fit()
state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))
out.mkdir(parents=True, exist_ok=True)
torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, out / f"rank{ctx.rank}.pt")
shutdown_distributed()
hard_exit(result.exit_code)  # 75 after a stop: an elastic agent then re-rendezvous
