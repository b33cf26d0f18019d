"""torchrun worker for test_units: a load slower than the checkpoint group's timeout (rank 1 reads 5 s late).

Scenario "default": the load group's own, longer timeout lets the load finish: the newest checkpoint is loaded.
Scenario "short": load_timeout_s=2 is outlasted: CheckpointLoadError on every rank, never a fall back to an older
checkpoint (a timeout is not corruption). Each rank writes what happened to OUT/rank<r>-<scenario>.json.
"""

import json
import sys
import time
from pathlib import Path

import torch

from ddlc.checkpoint import Checkpointer
from ddlc.checkpoint.errors import CheckpointLoadError
from ddlc.runtime.distributed import init_distributed


def model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    return model, optimizer


def slow_on_rank_1(ckpt: Checkpointer, delay_s: float) -> None:
    if ckpt.rank != 1:
        return
    make_reader = ckpt.store.dcp_reader

    def slow_reader(*args, **kwargs):
        reader = make_reader(*args, **kwargs)
        read_data = reader.read_data

        def late(plan, planner):
            time.sleep(delay_s)
            return read_data(plan, planner)

        reader.read_data = late
        return reader

    ckpt.store.dcp_reader = slow_reader


def main() -> None:
    out = Path(sys.argv[1])
    ctx = init_distributed("cpu", "gloo")
    uri = str(out / "ck")
    model, optimizer = model_and_optimizer(0)
    saver = Checkpointer(uri, rank=ctx.rank, world_size=ctx.world_size, commit_timeout_s=3, keep_last=5)
    saver.save(1, model, optimizer, {"step": 1}, blocking=True)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    saver.save(2, model, optimizer, {"step": 2}, blocking=True)
    saver.close()
    for scenario, load_timeout in (("default", None), ("short", 2.0)):
        warnings: list[str] = []
        loader = Checkpointer(uri, rank=ctx.rank, world_size=ctx.world_size, commit_timeout_s=3,
                              load_timeout_s=load_timeout, warn=warnings.append)
        slow_on_rank_1(loader, 5.0)  # 2 s past the group timeout: slower than it, whatever the load
        fresh, fresh_optimizer = model_and_optimizer(1)
        report = {"warnings": warnings}
        try:
            report["step"] = loader.resume(fresh, fresh_optimizer)["step"]
            report["equal"] = all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
        except CheckpointLoadError as error:
            report["error"] = str(error)
        (out / f"rank{ctx.rank}-{scenario}.json").write_text(json.dumps(report))
        if "error" in report:
            break  # the load group timed out: this process is done with collectives


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    import os

    os._exit(0)  # after a collective timed out, gloo's teardown can hang: leave at once
