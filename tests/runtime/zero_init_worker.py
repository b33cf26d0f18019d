"""Worker for test_zero_init: DeepSpeed ZeRO-3 built under deepspeed.zero.Init (distributed.deepspeed.zero_init)
vs built whole and partitioned by deepspeed.initialize, on 2 gloo ranks.

    zero_init_worker.py OUT_DIR [overrides...]   ->  OUT_DIR/rank<N>.json

It records, at construction time (inside the zero.Init context, before any engine exists), each parameter's local
size, full size and partition size, and the largest tensor any factory op allocated while building; then whether
both engines start from the weights a model built whole on the CPU has; four training losses of each; and whether a
checkpoint written by either loads into the other (weights equal, and the next step's loss the same as the engine
that wrote it)."""

import json
import sys
from pathlib import Path

import torch

from ddlc.config import load_config
from ddlc.runtime import init_distributed, shutdown_distributed
from ddlc.runtime.data import plan_batches
from ddlc.runtime.engines import deepspeed_engine
from ddlc.runtime.engines.deepspeed_engine import DeepSpeedEngine
from ddlc.runtime.model import GPT
from largest_allocation import LargestAllocation  # beside this script


out = Path(sys.argv[1])
cfg = load_config(None, ["distributed.strategy=deepspeed", "distributed.deepspeed.zero_stage=3", *sys.argv[2:]])
cfg.model.vocab_size = 250
ctx = init_distributed("cpu", "gloo")
SEED, STEPS = 1234, 4
plan = plan_batches(2, 4, None, ctx.world_size)
report = {}


def batch(step: int):
    data = torch.Generator().manual_seed(1000 * step + ctx.rank)
    tokens = torch.randint(0, 250, (2, cfg.model.block_size + 1), generator=data)
    return [(tokens[:, :-1], tokens[:, 1:])]


def build_recorded():
    model = GPT(cfg.model)
    # Still inside zero.Init: what this rank holds of each parameter right after construction.
    report["construction"] = {
        name: {"local": p.numel(), "full": getattr(p, "ds_numel", p.numel()),
               "partition": p.ds_tensor.numel() if getattr(p, "ds_tensor", None) is not None else None}
        for name, p in model.named_parameters()}
    report["largest_param"] = max(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    return model


def engine(zero_init: bool, build=lambda: GPT(cfg.model)) -> DeepSpeedEngine:
    cfg.distributed.deepspeed.zero_init = zero_init
    torch.manual_seed(SEED)  # as the Trainer seeds before building
    return DeepSpeedEngine(cfg, ctx, build, plan, total_steps=STEPS)


def train(eng: DeepSpeedEngine, steps) -> list[float]:
    return [eng.train_step(batch(step), lambda loss, norm: True)[0].item() for step in steps]


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


tracker = LargestAllocation()
build_partitioned = deepspeed_engine.build_partitioned


def tracked(*args, **kwargs):  # construction and initial values only (the optimizer's buckets come after)
    with tracker:
        return build_partitioned(*args, **kwargs)


deepspeed_engine.build_partitioned = tracked
part = engine(True, build_recorded)
deepspeed_engine.build_partitioned = build_partitioned
report["largest_allocation"] = tracker.largest
whole = engine(False)
report["zero_init_attr"] = [part.zero_init, whole.zero_init]

torch.manual_seed(SEED)
reference = {k: v.detach().clone() for k, v in GPT(cfg.model).state_dict().items()}  # built whole on the CPU
report["identical_init"] = {"zero_init": equal(part.full_state_dict(), reference),
                            "whole": equal(whole.full_state_dict(), reference)}

losses, saved, wrote = {}, {}, {}
for name, eng in (("zero_init", part), ("whole", whole)):
    torch.manual_seed(7 + ctx.rank)  # the same dropout stream for both
    losses[name] = train(eng, range(1, STEPS))
    saved[name] = eng.full_state_dict()
    checkpointer = eng.checkpointer(str(out / f"ckpt-{name}"), rank=ctx.rank, world_size=ctx.world_size)
    wrote[name] = checkpointer.save(STEPS - 1, eng.model, eng.optimizer, {"step": STEPS - 1}).committed
    checkpointer.close()
    losses[name] += train(eng, [STEPS])
report["losses"] = losses
report["committed"] = wrote

# Each checkpoint into an engine built the other way: same weights, and the next step gives the writer's loss
# (the optimizer state and RNG came back too).
crossed = {}
for writer, reader_zero_init in (("zero_init", False), ("whole", True)):
    eng = engine(reader_zero_init)
    checkpointer = eng.checkpointer(str(out / f"ckpt-{writer}"), rank=ctx.rank, world_size=ctx.world_size)
    state = checkpointer.resume(eng.model, eng.optimizer)
    checkpointer.close()
    crossed[writer] = {"resumed_step": state and state["step"], "weights": equal(eng.full_state_dict(), saved[writer]),
                       "next_loss": train(eng, [STEPS])[0]}
report["crossed"] = crossed

out.mkdir(parents=True, exist_ok=True)
(out / f"rank{ctx.rank}.json").write_text(json.dumps(report))
shutdown_distributed()
