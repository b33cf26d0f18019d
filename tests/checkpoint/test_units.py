"""Retention rules, manifests and storage URIs, without training."""

import hashlib
import json

import pytest
import torch

from ddlc.checkpoint import CheckpointStore, StorageError, select_for_deletion
from ddlc.checkpoint.checkpointer import Checkpointer
from ddlc.checkpoint.manifest import COMMIT, LATEST, verify
from tests.checkpoint.small_model import model_and_optimizer


@pytest.mark.parametrize(
    "committed, uncommitted, keep_last, keep_every, expected",
    [
        ([], [5, 10], 2, None, []),  # nothing committed: delete nothing, not even debris
        ([10, 20, 30, 40], [], 2, None, [10, 20]),
        ([10, 20, 30, 40], [], 1, 20, [10, 30]),
        ([10, 20, 30], [25, 35], 3, None, [25]),  # debris older than the newest commit goes; newer stays
        ([10], [], 1, None, []),
    ],
)
def test_retention(committed, uncommitted, keep_last, keep_every, expected):
    assert select_for_deletion(committed, uncommitted, keep_last, keep_every) == expected


def test_retention_never_deletes_newest_commit():
    for keep_last in range(1, 5):
        doomed = select_for_deletion([3, 7, 11, 2], [12], keep_last, None)
        assert 11 not in doomed


@pytest.mark.parametrize(
    "uri, message",
    [
        ("gs://bucket/x", "unsupported scheme 'gs://'"),
        ("s3:///prefix", "missing bucket name"),
        ("file://host/path", "absolute path"),
    ],
)
def test_bad_uris(uri, message):
    with pytest.raises(StorageError, match=message):
        CheckpointStore(uri)


def test_file_uri_and_atomic_write(tmp_path):
    store = CheckpointStore(f"file://{tmp_path}/ck")
    store.write_text_atomic("a/b.txt", "one")
    store.write_text_atomic("a/b.txt", "two")
    assert store.read_text("a/b.txt") == "two"
    assert [f.name for f in store.list_files("a")] == ["b.txt"]
    assert store.list_dirs() == ["a"]
    assert not list((tmp_path / "ck" / "a").glob("*.tmp-*"))


def test_save_commit_verify_and_resume(tmp_path, ctx):
    model, optimizer = model_and_optimizer()
    ckpt = Checkpointer(str(tmp_path / "ck"), keep_last=2)
    for step in (1, 2, 3):
        ckpt.save(step, model, optimizer, {"step": step}, blocking=step == 3)
    ckpt.close()
    assert ckpt.store.list_dirs() == ["step-00000002", "step-00000003"]  # keep_last=2
    assert ckpt.store.read_text(LATEST).strip() == "step-00000003"
    manifest = json.loads((tmp_path / "ck" / "step-00000003" / COMMIT).read_text())
    assert {".metadata", "trainer_state.json", "rng-rank00000.pt"} <= set(manifest["files"])
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert all(s.committed and s.error is None for s in ckpt.history)
    for step in (2, 3):  # async and blocking saves: recorded digests are those of the bytes on disk
        directory = tmp_path / "ck" / f"step-{step:08d}"
        files = json.loads((directory / COMMIT).read_text())["files"]
        assert any(name.endswith(".distcp") for name in files)
        assert {n: hashlib.sha256((directory / n).read_bytes()).hexdigest() for n in files} == \
            {n: f["sha256"] for n, f in files.items()}

    fresh, fresh_opt = model_and_optimizer(seed=1)
    state = Checkpointer(str(tmp_path / "ck")).resume(fresh, fresh_opt)
    assert state["step"] == 3
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], fresh_opt.state_dict()["state"][0]["exp_avg"])


def test_corrupt_and_truncated_checkpoints_are_skipped(tmp_path, ctx):
    model, optimizer = model_and_optimizer()
    ckpt = Checkpointer(str(tmp_path / "ck"), keep_last=5)
    for step in (1, 2, 3):
        ckpt.save(step, model, optimizer, {"step": step}, blocking=True)
    ckpt.close()
    shard = next((tmp_path / "ck" / "step-00000003").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-7])  # truncated
    data = bytearray((next((tmp_path / "ck" / "step-00000002").glob("*.distcp"))).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    next((tmp_path / "ck" / "step-00000002").glob("*.distcp")).write_bytes(bytes(data))

    store = ckpt.store
    assert "truncated" in verify(store, "step-00000003").summary()
    assert "sha256 mismatch" in verify(store, "step-00000002").summary()
    assert verify(store, "step-00000002", check_hashes=False).ok  # size-only cannot see a flipped byte
    warnings = []
    fresh, fresh_opt = model_and_optimizer(seed=1)
    state = Checkpointer(str(tmp_path / "ck"), warn=warnings.append).resume(fresh, fresh_opt)
    assert state["step"] == 1
    assert any("step-00000003" in w and "truncated" in w for w in warnings)
    assert any("step-00000002" in w and "sha256" in w for w in warnings)


def test_uncommitted_directory_never_counts(tmp_path, ctx):
    model, optimizer = model_and_optimizer()
    ckpt = Checkpointer(str(tmp_path / "ck"))
    ckpt.save(1, model, optimizer, {"step": 1}, blocking=True)
    ckpt.save(2, model, optimizer, {"step": 2}, blocking=True)
    ckpt.close()
    (tmp_path / "ck" / "step-00000002" / COMMIT).unlink()  # as if killed before the marker
    warnings = []
    state = Checkpointer(str(tmp_path / "ck"), warn=warnings.append).resume(*model_and_optimizer(seed=2))
    assert state["step"] == 1
    assert any("step-00000002" in w and "not committed" in w for w in warnings)


def test_replicated_state_is_split_across_ranks_and_resumes_whole_on_one_rank(tmp_path, ctx):
    """DDP ranks each stage and write a disjoint share of the replicated tensors; the checkpoint holds them all."""
    from tests.support import REPO, assert_ok, run, torchrun

    worker = REPO / "tests" / "checkpoint" / "replicated_save_worker.py"
    assert_ok(run(torchrun("--standalone", "--nproc_per_node=2", str(worker), str(tmp_path)), cwd=tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert set(ranks[0]["mine"]).isdisjoint(ranks[1]["mine"])
    assert sorted(ranks[0]["mine"] + ranks[1]["mine"]) == sorted(ranks[0]["all"])
    assert all(r["bytes"] > 0 for r in ranks) and len(ranks[0]["all"]) >= 8
    assert verify(CheckpointStore(str(tmp_path / "ckpt")), "step-00000007").ok

    torch.manual_seed(5)  # other weights and moments, all to be overwritten
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    state = Checkpointer(str(tmp_path / "ckpt")).resume(model, optimizer)
    assert state["step"] == 7
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    for key, value in expected["model"].items():
        assert torch.equal(model.state_dict()[key], value), key
    for index, moments in expected["optim"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(optimizer.state_dict()["state"][index][name], value), (index, name)


def test_shard_digests_are_taken_only_from_front_to_back_writes(tmp_path):
    from ddlc.checkpoint.write_digests import HashingFileSystem

    fs = HashingFileSystem()
    with fs.create_stream(tmp_path / "__0_0.distcp", "wb") as stream:
        stream.write(b"abc")
        stream.write(memoryview(b"defg"))
    with fs.create_stream(tmp_path / "__1_0.distcp", "wb") as stream:
        stream.write(b"xyz")
        stream.seek(0)  # rewriting earlier bytes: no digest, the checkpointer will read the file back
        stream.write(b"X")
    with pytest.raises(RuntimeError):
        with fs.create_stream(tmp_path / "__2_0.distcp", "wb") as stream:
            stream.write(b"partial")
            raise RuntimeError("writer died")
    with fs.create_stream(tmp_path / ".metadata.tmp", "wb") as stream:
        stream.write(b"not a shard")
    digests = fs.take_digests(str(tmp_path))
    assert digests == {"__0_0.distcp": {"size": 7, "sha256": hashlib.sha256(b"abcdefg").hexdigest()}}
    assert fs.take_digests(str(tmp_path)) == {}  # taken once



def test_write_digests_hashed_beside_the_writer_match_the_files(tmp_path):
    """The hasher thread digests what reached the file, in order: small buffers the writer reuses right after
    write() returns (torch's zip headers) and the large tensor storages DCP writes in place."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    from ddlc.checkpoint.write_digests import HASH_BY_REFERENCE, HashingFileSystem

    fs = HashingFileSystem()
    reused = bytearray(b"a" * 100)
    with fs.create_stream(tmp_path / "__0_0.distcp", "wb") as stream:
        for letter in b"bcdefgh":
            stream.write(reused)
            reused[:] = bytes([letter]) * 100  # the writer reuses its small buffer at once
        stream.write(memoryview(bytearray(b"z" * HASH_BY_REFERENCE)))
    on_disk = (tmp_path / "__0_0.distcp").read_bytes()
    assert fs.take_digests(str(tmp_path))["__0_0.distcp"]["sha256"] == hashlib.sha256(on_disk).hexdigest()

    writer = FileSystemWriter(str(tmp_path / "dcp"))
    writer.fs = HashingFileSystem()
    state = {"big": torch.randn(1 << 18), "small": torch.arange(10), "extra": {"step": 3}}
    dcp.save(state, storage_writer=writer, no_dist=True)
    digests = writer.fs.take_digests(str(tmp_path / "dcp"))
    assert digests and all(name.endswith(".distcp") for name in digests)
    for name, entry in digests.items():
        data = (tmp_path / "dcp" / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_failing_write_hasher_offers_no_digest(tmp_path, monkeypatch):
    """If hashing a buffer fails on the hasher thread, no digest is offered for that file (the checkpointer then
    hashes it by reading it back) rather than the digest of what was hashed before the failure."""
    from ddlc.checkpoint import write_digests

    class Broken:
        def __init__(self):
            self.calls = 0

        def update(self, data):
            self.calls += 1
            if self.calls == 2:
                raise ValueError("hash failed")

        def hexdigest(self):
            return "0" * 64

    monkeypatch.setattr(write_digests.hashlib, "sha256", Broken)
    fs = write_digests.HashingFileSystem()
    with fs.create_stream(tmp_path / "__0_0.distcp", "wb") as stream:
        for _ in range(3):
            stream.write(b"abc")
    assert fs.take_digests(str(tmp_path)) == {}

class _GatedStager:
    """DCP's async stager, made to start its copy only once the gate opens, so that anything racing it would show
    in the checkpoint (and the test decides when the copy can happen, instead of a wall-clock guess)."""

    def __init__(self):
        import threading

        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        self.inner = DefaultStager(StagingOptions(use_pinned_memory=False, use_shared_memory=False,
                                                  use_async_staging=True, use_non_blocking_copy=False))
        self.gate = threading.Event()
        self.executor = __import__("concurrent.futures").futures.ThreadPoolExecutor(max_workers=1)

    def stage(self, state_dict):
        def late_copy():
            self.gate.wait(60)
            return self.inner.stage(state_dict).result()

        self.future = self.executor.submit(late_copy)
        return self.future

    def close(self):
        self.executor.shutdown(wait=True)
        self.inner.close()


def test_async_save_holds_the_state_of_its_step_while_training_goes_on(tmp_path, ctx, monkeypatch):
    """The staging copy runs while the next forward/backward run; it must not see the next optimizer step (which
    waits for it) nor buffers updated by the next forward (copied at save time)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    expected_moment = optimizer.state[model[0].weight]["exp_avg"].clone()

    import threading
    import time

    ckpt = Checkpointer(str(tmp_path / "ck"))
    stager = _GatedStager()
    monkeypatch.setattr(ckpt, "_stager", lambda: stager)
    hold_s = 0.05
    # Hooks run in the order they were registered: this one (before the save's) opens the gate only as the step
    # begins, so the save's hook must wait at least hold_s; the one after the save's sees what that wait left.
    optimizer.register_step_pre_hook(
        lambda *_: threading.Thread(target=lambda: (time.sleep(hold_s), stager.gate.set())).start())
    stats = ckpt.save(1, model, optimizer, {"step": 1}, blocking=False)
    seen = {}
    optimizer.register_step_pre_hook(lambda *_: seen.update(
        staged=stager.future.done(),
        weight_unchanged=torch.equal(model[0].weight, expected["0.weight"])))
    held_by_save = stats.blocking_s
    model(torch.randn(4, 8) * 5 + 3).sum().backward()  # BatchNorm running stats move now
    assert not stager.gate.is_set()  # the copy has not started: the forward and backward ran alongside the save
    began = time.perf_counter()
    optimizer.step()  # waits for the staging copy
    step_s = time.perf_counter() - began
    assert seen == {"staged": True, "weight_unchanged": True}  # the step ran only after the copy, on the old weights
    waited = stats.blocking_s - held_by_save  # the wait before the step counts as time the loop was held
    assert hold_s <= waited <= step_s, (held_by_save, stats.blocking_s, step_s)
    assert not torch.equal(model[0].weight, expected["0.weight"])  # and then the step itself went ahead
    assert not torch.equal(model[1].running_mean, expected["1.running_mean"])
    ckpt.close()
    assert ckpt.history[-1].committed

    fresh = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh(torch.randn(4, 8)).sum().backward()
    fresh_optimizer.step()
    assert Checkpointer(str(tmp_path / "ck")).resume(fresh, fresh_optimizer)["step"] == 1
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert torch.equal(fresh_optimizer.state[fresh[0].weight]["exp_avg"], expected_moment)


@pytest.mark.parametrize("check_hashes", [True, False])
def test_checkpoint_that_cannot_be_decoded_is_skipped(tmp_path, ctx, check_hashes):
    """Same size, garbage where the first record's zip header was: the load itself fails, and resume falls back."""
    model, optimizer = model_and_optimizer()
    ckpt = Checkpointer(str(tmp_path / "ck"), keep_last=5)
    ckpt.save(1, model, optimizer, {"step": 1}, blocking=True)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    ckpt.save(2, model, optimizer, {"step": 2}, blocking=True)
    ckpt.close()
    shard = next((tmp_path / "ck" / "step-00000002").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[:64] = b"\xff" * 64
    shard.write_bytes(bytes(data))
    warnings = []
    fresh, fresh_opt = model_and_optimizer(seed=3)
    state = Checkpointer(str(tmp_path / "ck"), warn=warnings.append).resume(fresh, fresh_opt, check_hashes=check_hashes)
    assert state["step"] == 1
    assert any("step-00000002" in w for w in warnings)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_a_layout_change_on_one_rank_skips_that_save_and_replans(tmp_path):
    from tests.support import REPO, assert_ok, run, torchrun

    worker = REPO / "tests" / "checkpoint" / "layout_change_worker.py"
    assert_ok(run(torchrun("--standalone", "--nproc_per_node=2", str(worker), str(tmp_path)), cwd=tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["committed"] == {"1": True, "2": False, "3": True}
    assert all("different tensors" in (r["errors"]["2"] or "") for r in ranks)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    assert verify(store, "step-00000003").ok and store.read_text("latest").strip() == "step-00000003"
    assert not (tmp_path / "ckpt" / "step-00000002" / "COMMIT").exists()


def test_a_load_slower_than_the_group_timeout_is_not_corruption(tmp_path):
    """#21 item 9: one rank reads 5 s late while the checkpoint group's timeout is 3 s. The load has a timeout of
    its own and finishes with the newest checkpoint; when even that is outlasted, every rank stops with
    CheckpointLoadError instead of loading an older checkpoint."""
    from tests.support import REPO, run, torchrun

    worker = REPO / "tests" / "checkpoint" / "slow_load_worker.py"
    proc = run(torchrun("--standalone", "--nproc_per_node=2", str(worker), str(tmp_path)), cwd=tmp_path, timeout=300)
    reports = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}
    for rank in (0, 1):
        default = reports[f"rank{rank}-default"]
        assert default.get("step") == 2 and default["equal"], (default, proc.stderr[-3000:])
        assert not any("skipping" in w for w in default["warnings"]), default
    short = reports.get("rank0-short")
    assert short is not None and "step" not in short, (short, proc.stderr[-3000:])
    assert "not treated as corruption" in short["error"] and "load_timeout_s" in short["error"]


def test_a_failed_save_reaches_on_commit_as_a_failure(tmp_path):
    """ddlc_checkpoints_total{result="failure"} (and DDLCCheckpointFailed) count what on_commit hears: a save that
    fails must be heard too (it was only called on success)."""
    from ddlc.checkpoint import Checkpointer
    from tests.checkpoint.small_model import model_and_optimizer

    (tmp_path / "a-file").write_text("not a directory")
    heard = []
    ckpt = Checkpointer(str(tmp_path / "a-file" / "ckpt"), rank=0, world_size=1, on_commit=heard.append,
                        warn=lambda message: None)
    model, optimizer = model_and_optimizer()
    try:
        ckpt.save(1, model, optimizer, {"step": 1}, blocking=False)
        ckpt.wait()
    finally:
        ckpt.close()
    assert [(stats.step, stats.committed) for stats in heard] == [(1, False)] and heard[0].error
