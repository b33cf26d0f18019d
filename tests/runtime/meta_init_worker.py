"""Worker for test_meta_init: FSDP2 built on the meta device and materialised per shard vs built whole, then sharded.

Writes <out>/rank<N>.json: whether the built model was on meta, each local shard's size, the largest tensor any
factory op allocated while building (the meta path), whether the two paths' shards are bit-identical, and three
training losses of each path."""

import json
import sys
from pathlib import Path

import torch

from ddlc.config import load_config
from ddlc.runtime import init_distributed, shutdown_distributed
from ddlc.runtime.model import GPT
from ddlc.runtime.parallel import build_sharded, wrap_model
from largest_allocation import LargestAllocation  # beside this script


out = Path(sys.argv[1])
cfg = load_config(None, sys.argv[2:])
cfg.model.vocab_size = 250
ctx = init_distributed("cpu", "gloo")
seed = 1234
report = {}


def build_on_meta():
    model = GPT(cfg.model)
    report["built_on_meta"] = all(p.device.type == "meta" for p in model.parameters())
    report["full_numel"] = sum(p.numel() for p in model.parameters())
    report["largest_param"] = max(p.numel() for p in model.parameters())
    return model


tracker = LargestAllocation()
with tracker:
    meta = build_sharded(build_on_meta, ctx, seed)
report["largest_allocation"] = tracker.largest
report["local_numel"] = sum(p.to_local().numel() for p in meta.parameters())
report["tied"] = meta.head.weight is meta.tok_emb.weight

torch.manual_seed(seed)
whole = wrap_model(GPT(cfg.model), ctx, "fsdp")
report["identical"] = all(torch.equal(a.to_local(), b.to_local())
                          for a, b in zip(meta.parameters(), whole.parameters()))

losses = {}
for name, model in (("meta", meta), ("whole", whole)):
    torch.manual_seed(7 + ctx.rank)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(ctx.rank)
    losses[name] = []
    for _ in range(3):
        tokens = torch.randint(0, 250, (2, cfg.model.block_size + 1), generator=data)
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses[name].append(loss.item())
report["losses"] = losses
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{ctx.rank}.json").write_text(json.dumps(report))
shutdown_distributed()
