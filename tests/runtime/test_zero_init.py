"""DeepSpeed ZeRO-3 built under deepspeed.zero.Init (distributed.deepspeed.zero_init): each rank holds only its
partition from construction on, training starts from the same bits as building whole, losses are bit-identical,
and checkpoints written either way load into the other (2 gloo ranks, one process pair for all of it)."""

import json
import math

import pytest

from tests.support import REPO, assert_ok, run, torchrun

pytest.importorskip("deepspeed")

WORKER = REPO / "tests" / "runtime" / "zero_init_worker.py"


@pytest.mark.slow
def test_zero3_built_partitioned_matches_the_whole_build(tmp_path):
    # dropout on: the RNG streams must line up too; weight decay on: ds_shape must sort partitions into groups
    args = ["model.n_layer=2", "model.n_embd=64", "model.block_size=16", "model.dropout=0.1", "optimizer.lr=1e-2",
            "optimizer.weight_decay=0.1", f"distributed.deepspeed.config={REPO / 'ds_config.json'}"]
    proc = run(torchrun("--standalone", "--nproc_per_node=2", str(WORKER), str(tmp_path), *args), cwd=tmp_path,
               timeout=600, TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
    assert_ok(proc)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["zero_init_attr"] == [True, False]
        # At construction every parameter is a partition: nothing of it held locally, half of it (rounded up)
        # in this rank's partition, and no tensor allocated while building was larger than one parameter.
        sizes = report["construction"]
        assert sizes and all(s["local"] == 0 and s["partition"] == math.ceil(s["full"] / 2) for s in sizes.values())
        full = sum(s["full"] for s in sizes.values())
        assert sum(s["partition"] for s in sizes.values()) <= full // 2 + len(sizes)
        assert report["largest_allocation"] <= report["largest_param"] < full // 2
        assert report["identical_init"] == {"zero_init": True, "whole": True}
        losses = report["losses"]
        assert len(losses["zero_init"]) == 4 and losses["zero_init"] == losses["whole"]  # bit-identical
        if rank == 0:  # rank 0 commits (COMMIT, latest) once every rank has written its files
            assert report["committed"] == {"zero_init": True, "whole": True}
        for writer in ("zero_init", "whole"):
            crossed = report["crossed"][writer]
            assert crossed["resumed_step"] == 3 and crossed["weights"], (writer, crossed)
            assert crossed["next_loss"] == losses[writer][3], (writer, crossed)
