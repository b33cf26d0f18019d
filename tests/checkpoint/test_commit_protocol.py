"""ddlc.checkpoint.commit on hand-built step directories (no torch, no DCP): which files a rank owns, their digests,
the commit order of a store, the manifest rank 0 builds from what the ranks reported (and its refusal when a
reported file is gone), and COMMIT written before `latest`. The same protocol runs under real saves in
test_units.py and test_verify_paths.py; these cases are the fast, exact ones mutation testing leans on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ddlc.checkpoint import commit
from ddlc.checkpoint.manifest import COMMIT, LATEST, Manifest, read_commit
from ddlc.checkpoint.storage import CheckpointStore

DIR = "step-00000007"


def _digest(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _files(root: Path, files: dict[str, bytes]) -> CheckpointStore:
    for name, data in files.items():
        (root / DIR / name).parent.mkdir(parents=True, exist_ok=True)
        (root / DIR / name).write_bytes(data)
    return CheckpointStore(str(root))


TWO_RANKS = {"__0_0.distcp": b"rank zero shard", "__1_0.distcp": b"rank one", "__10_0.distcp": b"rank ten!",
             ".metadata": b"md", "trainer_state.json": b'{"step": 7}', "rng-rank00000.pt": b"r0",
             "rng-rank00001.pt": b"rng1", "notes.txt": b"someone else's"}


def test_rng_file_names():
    assert commit.rng_file(0) == "rng-rank00000.pt"
    assert commit.rng_file(12) == "rng-rank00012.pt"


def test_each_rank_owns_its_shards_and_rng_and_rank_0_the_shared_files(tmp_path):
    store = _files(tmp_path, TWO_RANKS)
    assert commit.own_files(store, DIR, 0) == {"__0_0.distcp": 15, ".metadata": 2, "trainer_state.json": 11,
                                               "rng-rank00000.pt": 2}
    assert commit.own_files(store, DIR, 1) == {"__1_0.distcp": 8, "rng-rank00001.pt": 4}  # not __10_
    assert commit.own_files(store, DIR, 10) == {"__10_0.distcp": 9}
    assert commit.own_files(store, DIR, 2) == {}


def test_own_file_digests_hash_the_files_back_without_a_hashing_writer(tmp_path):
    store = _files(tmp_path, TWO_RANKS)
    assert commit.own_file_digests(store, None, DIR, 1) == {"__1_0.distcp": _digest(b"rank one"),
                                                            "rng-rank00001.pt": _digest(b"rng1")}


def test_own_file_digests_take_a_writers_digest_only_for_a_file_of_that_size(tmp_path):
    from ddlc.checkpoint.write_digests import HashingFileSystem

    class Writer:
        fs = HashingFileSystem()

    store = CheckpointStore(str(tmp_path))
    (tmp_path / DIR).mkdir()
    for name, data in (("__0_0.distcp", b"written once"), ("__0_1.distcp", b"to be grown")):
        with Writer.fs.create_stream(tmp_path / DIR / name, "wb") as stream:
            stream.write(data)
    (tmp_path / DIR / "__0_0.distcp").write_bytes(b"WRITTEN ONCE")  # same size, other bytes: the digest is kept
    with (tmp_path / DIR / "__0_1.distcp").open("ab") as handle:  # grew after its digest: read back
        handle.write(b"!")
    (tmp_path / DIR / "trainer_state.json").write_bytes(b"{}")
    assert commit.own_file_digests(store, Writer(), DIR, 0) == {
        "__0_0.distcp": _digest(b"written once"),  # what the writer wrote, not read again
        "__0_1.distcp": _digest(b"to be grown!"),
        "trainer_state.json": _digest(b"{}")}


def _listed(manifest: Manifest) -> dict:
    return {name: entry.model_dump() for name, entry in manifest.files.items()}


def _committed(root: Path, step: int, seq=None, commit_text: str | None = None) -> None:
    directory = root / f"step-{step:08d}"
    directory.mkdir(parents=True)
    extra = {} if seq is None else {"seq": seq}
    text = Manifest(step=step, files={}, world_size=1, extra=extra).to_json() if commit_text is None else commit_text
    (directory / COMMIT).write_text(text)


def test_highest_seq_is_the_largest_commit_order_of_readable_commits(tmp_path):
    store = CheckpointStore(str(tmp_path))
    assert commit.highest_seq(store) == 0
    _committed(tmp_path, 10)  # no seq: 0
    assert commit.highest_seq(store) == 0
    _committed(tmp_path, 20, seq=3)
    _committed(tmp_path, 5, seq=9)  # the smallest step, the highest seq
    _committed(tmp_path, 30, seq=4)
    _committed(tmp_path, 40, commit_text=json.dumps({"step": 40, "files": {}, "world_size": 1,
                                                     "extra": {"seq": "99"}}))  # unreadable: not counted
    (tmp_path / "step-00000050").mkdir()  # uncommitted
    (tmp_path / "previous-x").mkdir()
    (tmp_path / "previous-x" / COMMIT).write_text(Manifest(step=1, files={}, world_size=1,
                                                           extra={"seq": 50}).to_json())
    assert commit.highest_seq(store) == 9


def test_build_manifest_lists_every_reported_and_unlisted_file(tmp_path):
    store = _files(tmp_path, TWO_RANKS)
    reported = [{"__0_0.distcp": _digest(b"rank zero shard"), "trainer_state.json": _digest(b'{"step": 7}')},
                {"__1_0.distcp": _digest(b"rank one")}]
    (tmp_path / DIR / COMMIT).write_text("an old COMMIT: never listed in the new one")
    manifest = commit.build_manifest(store, DIR, 7, reported, world_size=2, lineage="run-1", seq=5)
    assert manifest.step == 7 and manifest.world_size == 2 and manifest.lineage == "run-1" and manifest.seq == 5
    assert manifest.extra["trainer_state"] == {"step": 7}
    assert _listed(manifest) == {name: _digest(data) for name, data in TWO_RANKS.items()}
    assert set(manifest.extra) == {"trainer_state", "lineage", "seq"}


def test_build_manifest_takes_what_the_ranks_reported(tmp_path):
    """Rank digests are taken as reported (taken while writing): a file changed since then is for verify to find."""
    store = _files(tmp_path, {"__0_0.distcp": b"abc", "trainer_state.json": b"{}"})
    reported = [{"__0_0.distcp": _digest(b"xyz"), "trainer_state.json": _digest(b"{}")}]
    manifest = commit.build_manifest(store, DIR, 7, reported, world_size=1, lineage=None, seq=0)
    assert manifest.files["__0_0.distcp"].sha256 == hashlib.sha256(b"xyz").hexdigest()


def test_build_manifest_refuses_when_a_reported_file_is_gone(tmp_path):
    store = _files(tmp_path, {"__0_0.distcp": b"abc", "trainer_state.json": b"{}"})
    reported = [{"__0_0.distcp": _digest(b"abc"), "trainer_state.json": _digest(b"{}")},
                {"__1_0.distcp": _digest(b"def"), "rng-rank00001.pt": _digest(b"r")}]
    with pytest.raises(FileNotFoundError) as error:
        commit.build_manifest(store, DIR, 7, reported, world_size=2, lineage=None, seq=1)
    assert str(error.value) == (f"files recorded by a rank are gone from {tmp_path / DIR}: "
                                "['__1_0.distcp', 'rng-rank00001.pt']")


def test_build_manifest_node_local_needs_only_the_committers_files_here(tmp_path):
    """The memory tier of a multi-node job: rank 1's files live on its own node."""
    store = _files(tmp_path, {"__0_0.distcp": b"abc", "trainer_state.json": b"{}", "extra.bin": b"e"})
    reported = [{"__0_0.distcp": _digest(b"abc"), "trainer_state.json": _digest(b"{}")},
                {"__1_0.distcp": _digest(b"def")}]
    manifest = commit.build_manifest(store, DIR, 7, reported, world_size=2, lineage=None, seq=1, node_local=True)
    assert _listed(manifest) == {"__0_0.distcp": _digest(b"abc"), "trainer_state.json": _digest(b"{}"),
                              "extra.bin": _digest(b"e"), "__1_0.distcp": _digest(b"def")}
    (tmp_path / DIR / "__0_0.distcp").unlink()  # but the committer's own must be here
    with pytest.raises(FileNotFoundError, match=r"\['__0_0.distcp'\]$"):
        commit.build_manifest(store, DIR, 7, reported, world_size=2, lineage=None, seq=1, node_local=True)
    (tmp_path / DIR / "__0_0.distcp").write_bytes(b"abc")
    (tmp_path / DIR / "extra.bin").unlink()  # not reported by a rank: it is no longer listed, nothing vanished
    manifest = commit.build_manifest(store, DIR, 7, reported, world_size=2, lineage=None, seq=1, node_local=True)
    assert "extra.bin" not in manifest.files and "__1_0.distcp" in manifest.files


def test_write_commit_writes_commit_then_latest(tmp_path):
    store = _files(tmp_path, {"trainer_state.json": b"{}"})
    manifest = commit.build_manifest(store, DIR, 7, [{}], world_size=1, lineage=None, seq=2)
    commit.write_commit(store, DIR, manifest)
    assert read_commit(store, DIR).manifest == manifest
    assert (tmp_path / LATEST).read_text() == f"{DIR}\n"
    (tmp_path / LATEST).unlink()
    (tmp_path / DIR / COMMIT).unlink()
    (tmp_path / DIR / COMMIT).mkdir()  # COMMIT cannot be written: `latest` is not moved
    with pytest.raises(OSError):
        commit.write_commit(store, DIR, manifest)
    assert not (tmp_path / LATEST).exists()
