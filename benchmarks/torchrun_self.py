"""What the multi-rank benchmarks share: starting themselves again under torchrun (`python benchmarks/X.py` works),
the GPT state they checkpoint, and rank 0's value handed to every rank."""

import os
import subprocess
import sys


def relaunch_under_torchrun(script: str, nproc: int) -> int:
    """Run `script` with this process's arguments as `nproc` torchrun workers; one thread each unless
    OMP_NUM_THREADS says otherwise (ranks share the machine's cores)."""
    # `--` ends torchrun's own options: without it torchrun's argparse reads the script's `--nproc 2` as an
    # ambiguous abbreviation of its --nproc-per-node and exits. torchrun drops the `--`; the script sees its args.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script,
           "--", *sys.argv[1:]]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.call(cmd, env=env)


def gpt_after_one_step(ctx, layers: int, width: int, vocab: int):
    """(model, optimizer, batch) of a DDP-wrapped GPT after one AdamW step on `batch` (this rank's): the state is
    weights + the two Adam moments."""
    import torch

    from ddlc.config.schema import ModelConfig
    from ddlc.runtime import GPT, wrap_model

    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=layers, n_embd=width, n_head=8, block_size=64, vocab_size=vocab)
    model = wrap_model(GPT(cfg), ctx, "ddp")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(ctx.rank))
    _, loss = model(batch, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer, batch


def from_rank0(value, world: int):
    """Rank 0's `value` on every rank."""
    import torch.distributed as dist

    box = [value]
    if world > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]
