"""`ddlc checkpoints show` (the commit manifest as JSON) and `export -o model.safetensors` (the weights of one
checkpoint), as docs/checkpointing.md documents them, on a store written by the real Checkpointer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ddlc.checkpoint.checkpointer import Checkpointer
from ddlc.checkpoint.manifest import COMMIT
from ddlc.runtime.distributed import init_distributed
from tests.support import PYTHON, assert_ok, run

DDLC = str(Path(PYTHON).parent / "ddlc")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    """Checkpoints at steps 1, 2, 3 of a model that changes between them; the weights each one holds."""
    init_distributed("cpu", "gloo")
    root = tmp_path_factory.mktemp("show-export")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    ckpt = Checkpointer(str(root / "ck"), keep_last=10)
    weights = {}
    for step in (1, 2, 3):
        model(torch.randn(4, 8)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        weights[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ckpt.save(step, model, optimizer, {"step": step}, blocking=True)
    ckpt.close()
    return root / "ck", weights


def test_show_prints_the_commit_manifest_of_latest_and_of_a_step(store, tmp_path):
    ck, _ = store
    latest = run([DDLC, "checkpoints", "show", str(ck)], cwd=tmp_path)
    assert_ok(latest)
    assert json.loads(latest.stdout) == json.loads((ck / "step-00000003" / COMMIT).read_text())
    by_step = run([DDLC, "checkpoints", "show", str(ck), "2"], cwd=tmp_path)
    assert_ok(by_step)
    shown = json.loads(by_step.stdout)
    assert shown == json.loads((ck / "step-00000002" / COMMIT).read_text())
    assert shown["step"] == 2 and shown["extra"]["trainer_state"]["step"] == 2
    missing = run([DDLC, "checkpoints", "show", str(ck), "7"], cwd=tmp_path)
    assert missing.returncode == 2 and "no checkpoint named '7'" in missing.stderr, missing.stderr


def test_export_to_safetensors_holds_the_weights_of_that_checkpoint(store, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    ck, weights = store
    out = tmp_path / "out" / "model.safetensors"
    proc = run([DDLC, "checkpoints", "export", str(ck), "2", "-o", str(out)], cwd=tmp_path)
    assert_ok(proc)
    exported = load_file(str(out))
    assert exported.keys() == weights[2].keys()
    for name, value in weights[2].items():
        assert torch.equal(exported[name], value), name
    assert any(not torch.equal(exported[name], weights[3][name]) for name in exported)  # not the latest's
    with safe_open(str(out), "pt") as handle:
        assert handle.metadata()["source"] == str(ck / "step-00000002")
