"""Use ddlc's pieces from your own training loop (run: torchrun --standalone --nproc_per_node=2 examples/custom_loop.py)."""

import sys
from pathlib import Path

import torch

from ddlc.config import ModelConfig
from ddlc.runtime import GPT, MetricsLogger, hard_exit, init_distributed, shutdown_distributed, wrap_model

ctx = init_distributed()  # torchrun, deepspeed, horovodrun, Slurm or plain python
torch.manual_seed(0)
model = wrap_model(GPT(ModelConfig(vocab_size=256, n_layer=2, n_embd=64)), ctx, strategy="ddp")
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/custom-loop")
logger = MetricsLogger(run_dir, total_steps=20, enabled=ctx.is_main, log_interval=5)

generator = torch.Generator().manual_seed(ctx.rank)  # each rank its own data
pattern = torch.arange(65) % 7  # a sequence the model can learn
for step in range(1, 21):
    starts = torch.randint(0, 7, (8, 1), generator=generator)
    tokens = ((pattern + starts) % 7).to(ctx.device)
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    logger.log({"step": step, "loss": loss.item()})

logger.close()
shutdown_distributed()
hard_exit(0)
