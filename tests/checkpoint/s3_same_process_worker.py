"""torchrun worker for test_s3: save to s3:// and resume from it in the same processes (as an in-job fallback, or a
benchmark, does). Each rank writes OUT/rank<r>.json with the step it resumed and whether the weights came back.

fsspec shares one S3FileSystem per process, with a directory-listing cache: a rank that had listed a step directory
before rank 0 wrote its COMMIT then found no COMMIT there, while the other rank loaded: ranks disagreed, one went
into DCP's collectives alone, and the job hung.
"""

import json
import os
import sys
from pathlib import Path

import torch

from ddlc.checkpoint import Checkpointer
from ddlc.runtime.distributed import init_distributed
from small_model import model_and_optimizer  # beside this script (its directory is sys.path[0])


def main() -> None:
    out, uri = Path(sys.argv[1]), sys.argv[2]
    ctx = init_distributed("cpu", "gloo")
    model, optimizer = model_and_optimizer(0)
    saver = Checkpointer(uri, rank=ctx.rank, world_size=ctx.world_size, keep_last=1,
                         endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    saver.save(1, model, optimizer, {"step": 1}, blocking=True)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    saver.save(2, model, optimizer, {"step": 2}, blocking=True)
    report = {}
    for name, loader in (("same", saver), ("fresh", Checkpointer(uri, rank=ctx.rank, world_size=ctx.world_size,
                                                                  endpoint_url=os.environ["AWS_ENDPOINT_URL"]))):
        fresh, fresh_optimizer = model_and_optimizer(1)
        try:
            step = loader.resume(fresh, fresh_optimizer)["step"]
            equal = all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
            report[name] = {"step": step, "equal": equal}
        except Exception as error:  # noqa: BLE001 (reported to the test)
            report[name] = {"error": f"{type(error).__name__}: {error}"}
            break
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)
