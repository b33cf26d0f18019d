"""The paths of verification and commit that only show up when something is wrong: a file that COMMIT lists but
that is gone, a shard that grew, a save that fails at its very last step (COMMIT), and a commit whose rank files
vanished. In-process, one rank, real files.

Equivalent mutant left alive in manifest.py: dropping `name.startswith("/")` from _safe_name (an absolute name's first
part is empty, which the parts check refuses anyway)."""

from __future__ import annotations

import json
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

from ddlc.checkpoint import CheckpointStore
from ddlc.checkpoint.checkpointer import Checkpointer
from ddlc.checkpoint.commit import build_manifest, own_file_digests, rng_file
from ddlc.checkpoint.manifest import COMMIT, LATEST, read_manifest, verify
from tests.support import PYTHON, run
from tests.checkpoint.small_model import model_and_optimizer

DDLC = str(Path(PYTHON).parent / "ddlc")


def _saved(tmp_path: Path, steps=(1, 2)) -> Path:
    model, optimizer = model_and_optimizer()
    ckpt = Checkpointer(str(tmp_path / "ck"), keep_last=10)
    for step in steps:
        ckpt.save(step, model, optimizer, {"step": step}, blocking=True)
    ckpt.close()
    return tmp_path / "ck"


@pytest.mark.parametrize("check_hashes", [True, False])
def test_a_listed_file_that_is_gone_is_reported_missing(tmp_path, ctx, check_hashes):
    ck = _saved(tmp_path)
    store = CheckpointStore(str(ck))
    assert verify(store, "step-00000002", check_hashes=check_hashes).ok
    (ck / "step-00000002" / rng_file(0)).unlink()
    result = verify(store, "step-00000002", check_hashes=check_hashes)
    assert not result.ok
    assert result.problems == [f"{rng_file(0)}: missing"]
    assert verify(store, "step-00000001", check_hashes=check_hashes).ok  # the other checkpoint is untouched


@pytest.mark.parametrize("check_hashes", [True, False])
def test_a_shard_that_grew_is_reported_as_overwritten(tmp_path, ctx, check_hashes):
    """Appended bytes keep every recorded byte in place: only the size (or the digest) can tell."""
    ck = _saved(tmp_path)
    shard = next((ck / "step-00000002").glob("*.distcp"))
    recorded = read_manifest(CheckpointStore(str(ck)), "step-00000002").files[shard.name].size
    with shard.open("ab") as handle:
        handle.write(b"\x00" * 5)
    result = verify(CheckpointStore(str(ck)), "step-00000002", check_hashes=check_hashes)
    assert not result.ok
    assert result.problems == [f"{shard.name}: size {recorded + 5} != {recorded} (truncated or overwritten)"]


def test_cli_verify_reports_missing_and_grown_files_and_exits_1(tmp_path, ctx):
    ck = _saved(tmp_path, steps=(1, 2, 3))
    (ck / "step-00000002" / "trainer_state.json").unlink()
    shard = next((ck / "step-00000003").glob("*.distcp"))
    with shard.open("ab") as handle:
        handle.write(b"more")
    proc = run([DDLC, "checkpoints", "verify", str(ck)], cwd=tmp_path, COLUMNS="300")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "trainer_state.json: missing" in proc.stdout
    assert f"{shard.name}: size" in proc.stdout and "(truncated or overwritten)" in proc.stdout
    assert any("step-00000001" in line and "ok" in line and "missing" not in line and "size" not in line
               for line in proc.stdout.splitlines()), proc.stdout


@pytest.mark.parametrize("commit", ["deleted", "garbage"])
def test_a_directory_without_a_readable_commit_never_verifies(tmp_path, ctx, commit):
    """Its files may all be there (a save that died just before COMMIT): it is still not a checkpoint."""
    ck = _saved(tmp_path)
    if commit == "deleted":
        (ck / "step-00000002" / COMMIT).unlink()
    else:
        (ck / "step-00000002" / COMMIT).write_text("not json\nat all")
    store = CheckpointStore(str(ck))
    for check_hashes in (True, False):
        result = verify(store, "step-00000002", check_hashes=check_hashes)
        assert not result.ok and len(result.problems) == 1, result.problems
        assert ("not committed" if commit == "deleted" else "unreadable COMMIT") in result.problems[0]


class _GatedStager:
    """Holds the staged state back until the test opens the gate: the save waits in its "ready" phase, after it
    has prepared (emptied) its directory, so the test can put something in the save's way."""

    def __init__(self):
        self.future: Future = Future()
        self.state = None

    def stage(self, state_dict):
        self.state = state_dict
        return self.future

    def open(self):
        self.future.set_result(self.state)

    def close(self):
        pass


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("in_the_way, io_threads", [(COMMIT, 2), ("__0_0.distcp", 1), ("__0_0.distcp", 2)])
def test_latest_moves_only_after_commit(tmp_path, ctx, monkeypatch, in_the_way, io_threads):
    """The last write of a save (COMMIT), or DCP's write of a shard, fails: `latest` still names the previous
    checkpoint, which resumes. A shard that cannot even be opened is reported as itself, by the save (not as
    "generator didn't yield", nor as a traceback from one of DCP's writer threads)."""
    model, optimizer = model_and_optimizer()
    ckpt = Checkpointer(str(tmp_path / "ck"), keep_last=10, warn=lambda message: None, io_threads=io_threads)
    ckpt.save(1, model, optimizer, {"step": 1}, blocking=True)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    assert ckpt.store.read_text(LATEST).strip() == "step-00000001"

    gate = _GatedStager()
    monkeypatch.setattr(ckpt, "_stager", lambda: gate)
    stats = ckpt.save(2, model, optimizer, {"step": 2}, blocking=False)
    deadline = time.monotonic() + 30
    while "directory" not in stats.phases:  # the directory of step 2 has been prepared
        assert time.monotonic() < deadline
        time.sleep(0.01)
    blocker = tmp_path / "ck" / "step-00000002" / in_the_way / "in-the-way"
    blocker.parent.mkdir(parents=True)
    blocker.write_text(f"a directory where {in_the_way} goes: writing it fails")
    gate.open()
    ckpt.close()

    assert not stats.committed and stats.error and in_the_way in stats.error, stats
    assert stats.error.startswith("IsADirectoryError"), stats.error
    assert ckpt.store.read_text(LATEST).strip() == "step-00000001"
    assert not (tmp_path / "ck" / "step-00000002").exists()  # the failed save's debris is gone
    fresh, fresh_optimizer = model_and_optimizer(seed=1)
    assert Checkpointer(str(tmp_path / "ck")).resume(fresh, fresh_optimizer)["step"] == 1
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_a_save_that_fails_before_writing_leaves_latest_alone(tmp_path, ctx, monkeypatch):
    """Same, for a save whose staging copy fails (before any shard is written)."""
    model, optimizer = model_and_optimizer()
    ckpt = Checkpointer(str(tmp_path / "ck"), keep_last=10, warn=lambda message: None)
    ckpt.save(1, model, optimizer, {"step": 1}, blocking=True)
    gate = _GatedStager()
    monkeypatch.setattr(ckpt, "_stager", lambda: gate)
    stats = ckpt.save(2, model, optimizer, {"step": 2}, blocking=False)
    gate.future.set_exception(RuntimeError("staging copy failed"))
    ckpt.close()
    assert not stats.committed and "staging copy failed" in stats.error
    assert ckpt.store.read_text(LATEST).strip() == "step-00000001"
    assert not (tmp_path / "ck" / "step-00000002" / COMMIT).exists()


def test_a_commit_refuses_when_a_ranks_files_are_gone(tmp_path, ctx):
    """Rank 0 builds COMMIT from the digests every rank reported; a reported file that vanished before the commit
    makes it refuse (no COMMIT naming a file that is not there)."""
    ck = _saved(tmp_path, steps=(1,))
    store = CheckpointStore(str(ck))
    directory = "step-00000001"
    (ck / directory / COMMIT).unlink()
    reported = [own_file_digests(store, None, directory, 0)]
    assert rng_file(0) in reported[0] and any(n.endswith(".distcp") for n in reported[0])
    manifest = build_manifest(store, directory, 1, reported, 1, "lin", 1)
    assert set(manifest.files) == set(reported[0])
    shard = next(n for n in reported[0] if n.endswith(".distcp"))
    (ck / directory / shard).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        build_manifest(store, directory, 1, reported, 1, "lin", 1)
    # A second rank's report (here: a file rank 1 would have written) counts too.
    other = [reported[0] | {}, {"__1_0.distcp": {"size": 3, "sha256": "0" * 64}}]
    (ck / directory / shard).write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="__1_0.distcp"):
        build_manifest(store, directory, 1, other, 2, "lin", 1)
    assert not (ck / directory / COMMIT).exists()
    assert (ck / LATEST).read_text().strip() == directory  # untouched by the refusals


def test_check_file_reports_each_way_a_file_can_differ_from_commit(tmp_path, ctx):
    """check_file guards what is decoded first (DCP's .metadata) before anything unpickles it."""
    from ddlc.checkpoint.manifest import METADATA, check_file

    ck = _saved(tmp_path, steps=(1,))
    store = CheckpointStore(str(ck))
    manifest = read_manifest(store, "step-00000001")
    assert check_file(store, "step-00000001", manifest, METADATA) is None
    assert check_file(store, "step-00000001", manifest, "extra.bin") == "extra.bin: not listed in COMMIT"
    metadata = ck / "step-00000001" / METADATA
    original = metadata.read_bytes()
    metadata.write_bytes(original + b"x")
    assert check_file(store, "step-00000001", manifest, METADATA) == (
        f"{METADATA}: size {len(original) + 1} != {len(original)} (truncated or overwritten)")
    metadata.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    assert check_file(store, "step-00000001", manifest, METADATA) == f"{METADATA}: sha256 mismatch (corrupted)"
    metadata.unlink()
    assert check_file(store, "step-00000001", manifest, METADATA) == f"{METADATA}: missing"


@pytest.mark.parametrize("change, reason", [
    ({"step": "1"}, "step"),  # a string is not a step, even one that reads as a number
    ({"step": 1.0}, "step"),
    ({"extra": {"seq": -1}}, "extra.seq is not a commit sequence number"),
    ({"extra": {"seq": 10**16}}, "extra.seq is not a commit sequence number"),
    ({"files": {"a.bin": {"size": -1, "sha256": "0" * 64}}}, "files.a.bin.size"),
])
def test_a_commit_with_out_of_range_fields_is_unreadable(change, reason):
    from ddlc.checkpoint.manifest import Manifest, parse_commit

    raw = json.loads(Manifest(step=1, files={"a.bin": {"size": 3, "sha256": "0" * 64}}, world_size=1).to_json())
    raw.update(change)
    read = parse_commit(json.dumps(raw).encode(), "step-00000001")
    assert read.state == "unreadable" and reason in read.reason, read.reason


def test_newer_means_commit_order_even_against_the_clock():
    """A commit on a host whose clock is behind is still newer when its seq is higher (retention and resume)."""
    from ddlc.checkpoint.manifest import Manifest

    files = {"a.bin": {"size": 3, "sha256": "0" * 64}}
    earlier = Manifest(step=30, files=files, world_size=1, created=2000.0, extra={"seq": 3})
    later = Manifest(step=24, files=files, world_size=1, created=1000.0, extra={"seq": 4})
    assert later.order > earlier.order
    assert Manifest(step=24, files=files, world_size=1, created=1000.0, extra={"seq": 3}).order < earlier.order
