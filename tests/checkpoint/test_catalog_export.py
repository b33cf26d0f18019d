"""catalog.export in-process (the CLI test runs it in a subprocess): the weights of the checkpoint asked for, in the
format asked for (or the one the file name says), and every refusal as one line before anything is written, on a
store written by the real Checkpointer (DCP)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ddlc.checkpoint import catalog
from ddlc.checkpoint.checkpointer import Checkpointer
from ddlc.checkpoint.storage import CheckpointStore, StorageError


@pytest.fixture(scope="module")
def saved(tmp_path_factory, ctx) -> tuple[Path, dict[int, dict]]:
    """Checkpoints at steps 1, 2, 3 of a model that changes between them, and the weights each holds."""
    root = tmp_path_factory.mktemp("catalog-export") / "ck"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    ckpt = Checkpointer(str(root), keep_last=10)
    weights = {}
    for step in (1, 2, 3):
        model(torch.randn(3, 4)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        weights[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ckpt.save(step, model, optimizer, {"step": step}, blocking=True)
    ckpt.close()
    return root, weights


def _same(exported: dict, expected: dict) -> None:
    assert exported.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(exported[name], value), name


def test_export_latest_as_torch_by_default(saved, tmp_path):
    ck, weights = saved
    out = tmp_path / "new" / "dir" / "model.pt"  # its parent is created
    assert catalog.export(CheckpointStore(str(ck)), None, out) == ("step-00000003", len(weights[3]))
    _same(torch.load(out, weights_only=True), weights[3])


def test_export_a_step_as_safetensors_by_suffix_with_its_source(saved, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    ck, weights = saved
    out = tmp_path / "model.safetensors"
    assert catalog.export(CheckpointStore(str(ck)), "2", out) == ("step-00000002", len(weights[2]))
    _same(load_file(str(out)), weights[2])
    with safe_open(str(out), "pt") as handle:
        assert handle.metadata() == {"source": str(ck / "step-00000002")}


def test_an_explicit_format_wins_over_the_suffix(saved, tmp_path):
    from safetensors.torch import load_file

    ck, weights = saved
    store = CheckpointStore(str(ck))
    catalog.export(store, "step-00000001", tmp_path / "a.safetensors", fmt="torch")
    with open(tmp_path / "a.safetensors", "rb") as handle:  # by name, torch.load would read it as safetensors
        _same(torch.load(handle, weights_only=True), weights[1])
    catalog.export(store, "1", tmp_path / "b.pt", fmt="safetensors")
    _same(load_file(str(tmp_path / "b.pt")), weights[1])


def test_bad_format_and_outputs_are_one_line_before_anything_is_read(saved, tmp_path):
    ck, _ = saved
    store = CheckpointStore(str(ck))
    with pytest.raises(StorageError) as error:
        catalog.export(store, None, tmp_path / "x.pt", fmt="nope" * 20)
    assert str(error.value) == f"--format: {('nope' * 10)!r} is not one of auto, torch, safetensors"
    with pytest.raises(StorageError) as error:
        catalog.export(store, None, tmp_path)
    assert str(error.value) == f"--output: {tmp_path} is a directory; give a file name (.pt or .safetensors)"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError) as error:
        catalog.export(store, None, tmp_path / "a-file" / "x.pt")
    assert str(error.value) == f"--output: cannot create {tmp_path / 'a-file'}: File exists"
    with pytest.raises(StorageError, match="no checkpoint named '7'"):
        catalog.export(store, "7", tmp_path / "x.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_an_unwritable_output_is_one_line(saved, tmp_path, suffix):
    ck, _ = saved
    out = Path(f"/proc/ddlc-export{suffix}")
    with pytest.raises(StorageError) as error:
        catalog.export(CheckpointStore(str(ck)), None, out)
    message = str(error.value)
    # torch says "... open file failed with strerror: <reason>", safetensors "... I/O error: <reason> (os error 2)
    # at path ...": the OS's reason is what is left.
    assert message.startswith(f"--output: cannot write {out}: No such file or directory"), message
    assert "\n" not in message, message
    assert len(message) <= len(f"--output: cannot write {out}: ") + 200
    assert "strerror: " not in message and "I/O error: " not in message  # the OS reason, not the wrapper's


def test_a_checkpoint_that_does_not_verify_is_never_exported(saved, tmp_path):
    ck, _ = saved
    copy = tmp_path / "ck"
    shutil.copytree(ck / "step-00000003", copy / "step-00000003")
    shard = next((copy / "step-00000003").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StorageError) as error:
        catalog.export(CheckpointStore(str(copy)), "3", tmp_path / "x.pt")
    assert str(error.value) == (f"{copy / 'step-00000003'} does not verify: {shard.name}: sha256 mismatch "
                                "(corrupted)")
    assert not (tmp_path / "x.pt").exists()


def test_safetensors_export_without_the_package_is_one_line(saved, tmp_path, monkeypatch):
    import sys

    ck, _ = saved
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # what `import` sees when it is not installed
    with pytest.raises(StorageError) as error:
        catalog.export(CheckpointStore(str(ck)), None, tmp_path / "m.safetensors")
    assert str(error.value) == "export to .safetensors needs the safetensors package"
    assert not (tmp_path / "m.safetensors").exists()
