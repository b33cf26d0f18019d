"""FSDP2 built on the meta device (distributed.fsdp.meta_init): no rank ever holds the whole model, and training
starts from the same bits, so losses are bit-identical to building whole and then sharding (2 gloo ranks)."""

import json

from tests.support import REPO, assert_ok, run, torchrun

WORKER = REPO / "tests" / "runtime" / "meta_init_worker.py"


def test_meta_built_fsdp_matches_the_whole_build_and_never_holds_the_model(tmp_path):
    # dropout on: the per-rank RNG streams must line up too
    args = ["model.n_layer=2", "model.n_embd=64", "model.block_size=16", "model.dropout=0.1"]
    assert_ok(run(torchrun("--standalone", "--nproc_per_node=2", str(WORKER), str(tmp_path), *args), cwd=tmp_path,
                  timeout=300))
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["built_on_meta"] and report["tied"]
        assert report["identical"], "the shards differ from the model built whole"
        assert report["losses"]["meta"] == report["losses"]["whole"]  # bit-identical
        # This rank holds half of the model; while building, no tensor was larger than one parameter (the
        # embedding, drawn full-size once to stay bit-identical), never the whole model.
        assert report["local_numel"] <= report["full_numel"] // 2 + 64 * 64
        assert report["largest_allocation"] <= report["largest_param"] < report["full_numel"] // 2
