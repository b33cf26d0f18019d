"""ddlc.checkpoint.catalog in-process, on hand-built stores in the on-disk format: what `ddlc checkpoints
list/verify/prune` and retention after each commit do, called as a library (the CLI tests run the same code in a
subprocess, which mutation testing cannot see).

Each checkpoint here is a step directory with a few small files and a COMMIT written by the library's own
`Manifest.to_json()`, with sizes and SHA-256 taken by hashlib here: that is the whole format `scan`, `verify` and
`apply` read (they never open a DCP file), and it keeps torch (and its threads) out of these tests.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ddlc.checkpoint import catalog, retention
from ddlc.checkpoint.catalog import CheckpointInfo
from ddlc.checkpoint.manifest import COMMIT, LATEST, Manifest
from ddlc.checkpoint.storage import CheckpointStore, StorageError

FILES = {"__0_0.distcp": b"shard of rank zero" * 7, ".metadata": b"meta", "trainer_state.json": b'{"step": 1}'}


def _write(root: Path, step: int, seq: int | None = None, lineage: str | None = None, run_name: str | None = None,
           files: dict[str, bytes] | None = None, created: float = 1000.0) -> Path:
    """A committed checkpoint `step-NNNNNNNN` with `files`, its COMMIT listing their sizes and SHA-256."""
    files = FILES if files is None else files
    directory = root / f"step-{step:08d}"
    directory.mkdir(parents=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    extra: dict = {"seq": step if seq is None else seq}
    if lineage is not None:
        extra["lineage"] = lineage
    if run_name is not None:
        extra["trainer_state"] = {"run_name": run_name}
    manifest = Manifest(step=step, world_size=1, created=created, extra=extra,
                        files={name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                               for name, data in files.items()})
    (directory / COMMIT).write_text(manifest.to_json())
    return directory


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _store(root: Path) -> CheckpointStore:
    return CheckpointStore(str(root))


def _states(entries: list[retention.Entry]) -> dict[str, tuple]:
    return {e.name: (e.state, e.problem) for e in entries}


def _left(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("step-"))


# -- open_store, latest ---------------------------------------------------------------------------------------


def test_open_store_refuses_a_missing_uri_and_a_file(tmp_path):
    with pytest.raises(StorageError, match="^checkpoint URI not found: .*nowhere$"):
        catalog.open_store(str(tmp_path / "nowhere"))
    assert catalog.open_store(str(tmp_path / "nowhere"), must_exist=False).root == str(tmp_path / "nowhere")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError, match="^checkpoint URI is a file, not a directory: .*a-file$"):
        catalog.open_store(str(tmp_path / "a-file"))
    with pytest.raises(StorageError, match="is a file"):
        catalog.open_store(str(tmp_path / "a-file"), must_exist=False)
    assert catalog.open_store(str(tmp_path)).root == str(tmp_path)


@pytest.mark.parametrize("content, expected, warned", [
    (b"step-00000020\n", "step-00000020", None),
    (b"  step-00000020  ", "step-00000020", None),
    (b"", None, None),
    (b"\n \n", None, None),
    (b"\xff\xfe garbage", None, None),
    (b"../outside/step-00000020", None, "'../outside/step-00000020', not a checkpoint name inside"),
    (b"/etc", None, "'/etc', not a checkpoint name inside"),
    (b"step-20", None, "'step-20'"),
    (b"x" * 200, None, "'" + "x" * 80 + "', not"),  # the pointer is quoted, cut at 80 characters
])
def test_latest_is_only_a_step_directory_name_inside_the_root(tmp_path, content, expected, warned):
    (tmp_path / LATEST).write_bytes(content)
    warnings: list[str] = []
    assert catalog.latest_pointer(_store(tmp_path), warnings.append) == expected
    assert catalog.latest_pointer(_store(tmp_path)) == expected  # no warn callback: the same answer, silently
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warned in warnings[0], warnings
        assert warnings[0].startswith(f"{tmp_path / LATEST} holds ") and warnings[0].endswith("; ignored")


def test_latest_that_is_missing_or_a_directory_is_no_pointer(tmp_path):
    warnings: list[str] = []
    assert catalog.latest_pointer(_store(tmp_path), warnings.append) is None
    assert warnings == []  # no `latest` yet is the normal case
    (tmp_path / LATEST).mkdir()
    assert catalog.latest_pointer(_store(tmp_path), warnings.append) is None
    assert warnings == [f"{tmp_path / LATEST} cannot be read (IsADirectoryError); ignored"]
    assert catalog.latest_pointer(_store(tmp_path)) is None


def test_latest_pointer_reads_a_bounded_prefix(tmp_path):
    """A huge `latest` is not read whole: its first 4096 bytes are not a name."""
    (tmp_path / LATEST).write_bytes(b"step-00000020" + b" " * 4083 + b"x")  # 4097 bytes: the x lies past the limit
    assert catalog.latest_pointer(_store(tmp_path)) == "step-00000020"
    (tmp_path / LATEST).write_bytes(b"step-00000020" + b" " * 4082 + b"x")  # 4096 bytes: the x is read
    assert catalog.latest_pointer(_store(tmp_path)) is None


def test_point_latest_writes_removes_and_refuses_a_directory(tmp_path):
    store = _store(tmp_path)
    catalog.point_latest(store, "step-00000030")
    assert (tmp_path / LATEST).read_text() == "step-00000030\n"
    catalog.point_latest(store, None)
    assert not (tmp_path / LATEST).exists()
    catalog.point_latest(store, None)  # already gone: nothing to do
    (tmp_path / LATEST).mkdir()
    with pytest.raises(StorageError, match=f"^cannot update {tmp_path / LATEST}: "):
        catalog.point_latest(store, "step-00000030")


# -- list -----------------------------------------------------------------------------------------------------


def test_list_names_every_step_directory_with_its_state_in_step_order(tmp_path):
    for step in (30, 10, 20):
        _write(tmp_path, step)
    (tmp_path / "step-00000040").mkdir()  # a save in flight: no COMMIT yet
    _write(tmp_path, 50)
    (tmp_path / "step-00000050" / COMMIT).write_text("[1, 2]")
    _write(tmp_path, 60)
    (tmp_path / "step-00000060" / COMMIT).unlink()
    (tmp_path / "step-00000060" / COMMIT).mkdir()
    for other in ("previous-20261201T000000Z", "step-12", "tmp"):  # not checkpoint directories
        (tmp_path / other).mkdir()
    (tmp_path / "step-00000070").write_text("a file, not a directory")
    (tmp_path / LATEST).write_text("step-00000020")

    rows = catalog.list_checkpoints(_store(tmp_path))
    assert [(r.name, r.step, r.state, r.is_latest) for r in rows] == [
        ("step-00000010", 10, "committed", False), ("step-00000020", 20, "committed", True),
        ("step-00000030", 30, "committed", False), ("step-00000040", 40, "incomplete", False),
        ("step-00000050", 50, "unreadable", False), ("step-00000060", 60, "unreadable", False)]
    by_name = {r.name: r for r in rows}
    assert by_name["step-00000050"].reason == "COMMIT holds an array, not an object"
    assert by_name["step-00000060"].reason == "COMMIT is a directory, not a file"
    assert by_name["step-00000040"].reason is None
    assert by_name["step-00000020"].size_bytes == sum(len(d) for d in FILES.values())
    assert by_name["step-00000020"].manifest.step == 20 and by_name["step-00000020"].committed
    assert by_name["step-00000040"].size_bytes is None and by_name["step-00000050"].size_bytes is None
    assert not by_name["step-00000050"].committed and by_name["step-00000050"].manifest is None


def test_list_of_an_empty_or_missing_store_is_empty(tmp_path):
    assert catalog.list_checkpoints(_store(tmp_path)) == []
    assert catalog.list_checkpoints(_store(str(tmp_path / "not-yet"))) == []


def test_checkpoint_info_state_names():
    assert CheckpointInfo("s", 1, True, None, False).state == "committed"
    assert CheckpointInfo("s", 1, False, None, False, reason="bad").state == "unreadable"
    assert CheckpointInfo("s", 1, False, None, False).state == "incomplete"


# -- scan -----------------------------------------------------------------------------------------------------


def test_scan_verifies_each_checkpoint_on_its_own(tmp_path):
    _write(tmp_path, 10, seq=1, lineage="run-a")
    _write(tmp_path, 20, seq=2, lineage="run-a")
    (tmp_path / "step-00000020" / "trainer_state.json").unlink()  # listed in COMMIT, gone
    _write(tmp_path, 30, seq=3)
    with (tmp_path / "step-00000030" / "__0_0.distcp").open("ab") as handle:  # grew: appended bytes
        handle.write(b"12345")
    _write(tmp_path, 40, seq=4)
    (tmp_path / "step-00000040" / COMMIT).write_bytes(b"\xff garbage")
    (tmp_path / "step-00000050").mkdir()
    (tmp_path / "step-00000050" / "__0_0.distcp").write_bytes(b"half")

    entries = catalog.scan(_store(tmp_path))
    assert [e.name for e in entries] == [f"step-000000{s}0" for s in (1, 2, 3, 4, 5)]
    size = len(FILES["__0_0.distcp"])
    assert _states(entries) == {
        "step-00000010": (retention.VERIFIED, None),
        "step-00000020": (retention.CORRUPT, "trainer_state.json: missing"),
        "step-00000030": (retention.CORRUPT, f"__0_0.distcp: size {size + 5} != {size} (truncated or overwritten)"),
        "step-00000040": (retention.UNREADABLE, "COMMIT is not UTF-8 (byte 0)"),
        "step-00000050": (retention.UNCOMMITTED, None),
    }
    by_name = {e.name: e for e in entries}
    assert by_name["step-00000010"].order == (1, 1000.0, 10) and by_name["step-00000010"].lineage == "run-a"
    assert by_name["step-00000020"].order == (2, 1000.0, 20) and by_name["step-00000020"].lineage == "run-a"
    assert by_name["step-00000030"].lineage is None
    assert by_name["step-00000040"].order is None and by_name["step-00000050"].order is None
    assert [e.step for e in entries] == [10, 20, 30, 40, 50]


def test_scan_sees_a_flipped_byte_only_with_hashes(tmp_path):
    _write(tmp_path, 10)
    _flip_a_byte(tmp_path / "step-00000010" / "__0_0.distcp")
    assert _states(catalog.scan(_store(tmp_path))) == {"step-00000010": (retention.VERIFIED, None)}
    assert _states(catalog.scan(_store(tmp_path), check_hashes=True)) == {
        "step-00000010": (retention.CORRUPT, "__0_0.distcp: sha256 mismatch (corrupted)")}


def test_scan_takes_known_problems_and_just_committed_checkpoints_as_given(tmp_path):
    _write(tmp_path, 10)
    _write(tmp_path, 20)
    (tmp_path / "step-00000020" / ".metadata").unlink()
    _write(tmp_path, 30)
    (tmp_path / "step-00000030").joinpath(COMMIT).write_text("{not json")
    entries = catalog.scan(_store(tmp_path), known={"step-00000010": "sha256 mismatch at resume",
                                                    "step-00000030": "ignored: its COMMIT is read first"},
                           known_good=["step-00000020"])
    assert _states(entries)["step-00000010"] == (retention.CORRUPT, "sha256 mismatch at resume")
    assert _states(entries)["step-00000020"] == (retention.VERIFIED, None)  # just committed here: not read again
    assert _states(entries)["step-00000030"][0] == retention.UNREADABLE
    assert _states(entries)["step-00000030"][1].startswith("COMMIT is not JSON: ")


def test_newest_verified_is_by_commit_order_and_lineage(tmp_path):
    _write(tmp_path, 30, seq=1, lineage="old")
    _write(tmp_path, 20, seq=2, lineage="new")
    _write(tmp_path, 10, seq=3, lineage="new")
    (tmp_path / "step-00000010" / ".metadata").unlink()
    entries = catalog.scan(_store(tmp_path))
    assert catalog.newest_verified(entries).name == "step-00000020"  # newer than 30 by commit order
    assert catalog.newest_verified(entries, lineages={"old"}).name == "step-00000030"
    assert catalog.newest_verified(entries, lineages={"other"}) is None
    assert catalog.newest_verified([e for e in entries if e.name == "step-00000010"]) is None


# -- apply ----------------------------------------------------------------------------------------------------


def _decide(entries, keep: set[str]) -> list[retention.Decision]:
    return [retention.Decision(e, e.name not in keep, "test") for e in entries]


def test_apply_dry_run_deletes_nothing_and_leaves_latest(tmp_path):
    for step in (10, 20, 30):
        _write(tmp_path, step)
    (tmp_path / LATEST).write_text("step-00000010")
    store = _store(tmp_path)
    entries = catalog.scan(store)
    doomed = catalog.apply(store, entries, _decide(entries, {"step-00000030"}), dry_run=True)
    assert doomed == ["step-00000010", "step-00000020"]
    assert _left(tmp_path) == ["step-00000010", "step-00000020", "step-00000030"]
    assert (tmp_path / LATEST).read_text() == "step-00000010"


def test_apply_moves_latest_off_a_doomed_checkpoint_before_deleting(tmp_path):
    for step in (10, 20, 30):
        _write(tmp_path, step)
    (tmp_path / LATEST).write_text("step-00000010")
    store = _store(tmp_path)
    entries = catalog.scan(store)
    assert catalog.apply(store, entries, _decide(entries, {"step-00000020", "step-00000030"})) == ["step-00000010"]
    assert _left(tmp_path) == ["step-00000020", "step-00000030"]
    assert (tmp_path / LATEST).read_text() == "step-00000030\n"  # the newest verified one that stays


def test_apply_leaves_latest_on_a_verified_checkpoint_that_stays(tmp_path):
    """`latest` names what the last save committed; an older verified one that stays is not overridden."""
    for step in (10, 20, 30):
        _write(tmp_path, step)
    (tmp_path / LATEST).write_text("step-00000020")
    store = _store(tmp_path)
    entries = catalog.scan(store)
    catalog.apply(store, entries, _decide(entries, {"step-00000020", "step-00000030"}))
    assert (tmp_path / LATEST).read_text() == "step-00000020"
    assert _left(tmp_path) == ["step-00000020", "step-00000030"]


@pytest.mark.parametrize("pointer", ["step-00000030", "step-00000099", None])
def test_apply_moves_latest_off_a_corrupt_or_missing_checkpoint(tmp_path, pointer):
    for step in (10, 20, 30):
        _write(tmp_path, step)
    (tmp_path / "step-00000030" / ".metadata").unlink()  # corrupt, newer than any verified: kept
    if pointer:
        (tmp_path / LATEST).write_text(pointer)
    store = _store(tmp_path)
    entries = catalog.scan(store)
    catalog.apply(store, entries, _decide(entries, {"step-00000020", "step-00000030"}))
    assert (tmp_path / LATEST).read_text() == "step-00000020\n"
    assert _left(tmp_path) == ["step-00000020", "step-00000030"]


@pytest.mark.parametrize("pointer, left_pointer", [
    ("step-00000010", None),  # names a deleted one: removed
    ("step-00000020", "step-00000020"),  # names the kept one: kept as it is
], ids=["names-a-deleted-one", "names-a-kept-one"])
def test_apply_with_nothing_verified_left_and_latest(tmp_path, pointer, left_pointer):
    _write(tmp_path, 10)
    _write(tmp_path, 20)
    (tmp_path / "step-00000020" / ".metadata").unlink()
    (tmp_path / LATEST).write_text(pointer)
    store = _store(tmp_path)
    entries = catalog.scan(store)
    catalog.apply(store, entries, _decide(entries, {"step-00000020"}))
    if left_pointer is None:
        assert not (tmp_path / LATEST).exists()
    else:
        assert (tmp_path / LATEST).read_text() == left_pointer
    assert _left(tmp_path) == ["step-00000020"]


def test_apply_deletes_nothing_when_latest_cannot_be_moved(tmp_path):
    for step in (10, 20):
        _write(tmp_path, step)
    (tmp_path / LATEST).mkdir()  # in the way of the pointer
    (tmp_path / LATEST / "keep-me").write_text("x")
    store = _store(tmp_path)
    entries = catalog.scan(store)
    with pytest.raises(StorageError, match="cannot update"):
        catalog.apply(store, entries, _decide(entries, {"step-00000020"}))
    assert _left(tmp_path) == ["step-00000010", "step-00000020"]
    assert (tmp_path / LATEST / "keep-me").exists()


# -- resolve --------------------------------------------------------------------------------------------------


def test_resolve_latest_a_step_and_a_name(tmp_path):
    for step in (10, 20, 120):
        _write(tmp_path, step)
    store = _store(tmp_path)
    assert catalog.resolve(store, None) == "step-00000120"  # no pointer: the newest verified
    (tmp_path / LATEST).write_text("step-00000020")
    assert catalog.resolve(store, None) == "step-00000020"
    assert catalog.resolve(store, "latest") == "step-00000020"
    (tmp_path / LATEST).write_text("step-00000099")  # names a directory that is gone
    assert catalog.resolve(store, "latest") == "step-00000120"
    assert catalog.resolve(store, "120") == "step-00000120"
    assert catalog.resolve(store, "000000010") == "step-00000010"
    assert catalog.resolve(store, "step-00000010") == "step-00000010"


@pytest.mark.parametrize("which", ["7", "step-00000007", "²", "1" * 16, "../step-00000010", "COMMIT", "latest2",
                                   "x" * 200])
def test_resolve_refuses_what_is_not_a_checkpoint_here(tmp_path, which):
    _write(tmp_path, 10)
    with pytest.raises(StorageError) as error:
        catalog.resolve(_store(tmp_path), which)
    assert str(error.value) == (f"{tmp_path}: no checkpoint named {which[:80]!r} (give a step, step-NNNNNNNN or "
                                "latest)")


def test_resolve_latest_with_nothing_that_verifies(tmp_path):
    _write(tmp_path, 10)
    (tmp_path / "step-00000010" / ".metadata").unlink()
    with pytest.raises(StorageError, match=f"^{tmp_path}: no committed checkpoint that verifies$"):
        catalog.resolve(_store(tmp_path), "latest")


# -- prune and plan_on_proof ----------------------------------------------------------------------------------


def test_prune_refuses_keep_last_below_1(tmp_path):
    _write(tmp_path, 10)
    with pytest.raises(StorageError, match=r"^--keep-last must be at least 1 \(got 0\)$"):
        catalog.prune(_store(tmp_path), keep_last=0)
    assert _left(tmp_path) == ["step-00000010"]


def test_prune_keeps_keep_last_verified_and_every_unreadable_one(tmp_path):
    for step in (10, 20, 30, 40):
        _write(tmp_path, step)
    (tmp_path / "step-00000015").mkdir()  # debris below the newest verified step
    _write(tmp_path, 25)
    (tmp_path / "step-00000025" / COMMIT).write_text("null")
    (tmp_path / LATEST).write_text("step-00000010")
    decisions = catalog.prune(_store(tmp_path), keep_last=2)
    assert sorted(d.entry.name for d in decisions if d.delete) == ["step-00000010", "step-00000015",
                                                                  "step-00000020"]
    assert _left(tmp_path) == ["step-00000025", "step-00000030", "step-00000040"]
    assert (tmp_path / LATEST).read_text() == "step-00000040\n"


def test_prune_keep_every(tmp_path):
    for step in (10, 15, 20, 25, 30):
        _write(tmp_path, step)
    catalog.prune(_store(tmp_path), keep_last=1, keep_every=10)
    assert _left(tmp_path) == ["step-00000010", "step-00000020", "step-00000030"]


def test_prune_dry_run_decides_the_same_and_deletes_nothing(tmp_path):
    for step in (10, 20, 30):
        _write(tmp_path, step)
    (tmp_path / LATEST).write_text("step-00000010")
    decisions = catalog.prune(_store(tmp_path), keep_last=1, dry_run=True)
    assert [(d.entry.name, d.delete) for d in decisions] == [
        ("step-00000010", True), ("step-00000020", True), ("step-00000030", False)]
    assert all(d.why for d in decisions)
    assert _left(tmp_path) == ["step-00000010", "step-00000020", "step-00000030"]
    assert (tmp_path / LATEST).read_text() == "step-00000010"


@pytest.mark.parametrize("check_hashes", [False, True])
def test_prune_hashes_the_kept_checkpoints_before_deleting_older_ones(tmp_path, check_hashes):
    """A flipped byte in the newest passes a size check; plain prune must not keep only it and delete the rest."""
    for step in (10, 20, 30, 40):
        _write(tmp_path, step)
    _flip_a_byte(tmp_path / "step-00000040" / "__0_0.distcp")
    (tmp_path / LATEST).write_text("step-00000040")
    decisions = {d.entry.name: d for d in catalog.prune(_store(tmp_path), keep_last=1, check_hashes=check_hashes)}
    assert _left(tmp_path) == ["step-00000030", "step-00000040"]  # the good one, and the evidence
    assert (tmp_path / LATEST).read_text() == "step-00000030\n"
    assert not decisions["step-00000040"].delete and "sha256 mismatch" in decisions["step-00000040"].why
    assert decisions["step-00000040"].entry.state == retention.CORRUPT


def test_plan_on_proof_hashes_each_leaned_on_checkpoint_once_per_commit(tmp_path):
    for step in (10, 20, 30, 40):
        _write(tmp_path, step)
    store = _store(tmp_path)
    proven: dict = {}
    entries, decisions = catalog.plan_on_proof(store, catalog.scan(store), keep_last=2, proven=proven)
    assert proven == {"step-00000040": (40, 1000.0, 40), "step-00000030": (30, 1000.0, 30)}
    assert [d.entry.name for d in decisions if d.delete] == ["step-00000010", "step-00000020"]
    # Proven at this commit order: not hashed again (a flip after that is for the next verify to find).
    _flip_a_byte(tmp_path / "step-00000040" / "__0_0.distcp")
    entries, decisions = catalog.plan_on_proof(store, catalog.scan(store), keep_last=2, proven=proven)
    assert all(e.state == retention.VERIFIED for e in entries)
    # A checkpoint committed again under the same name (a new order) is hashed again, and found corrupt.
    proven["step-00000040"] = (39, 1000.0, 40)
    entries, decisions = catalog.plan_on_proof(store, catalog.scan(store), keep_last=2, proven=proven)
    assert _states(entries)["step-00000040"] == (retention.CORRUPT, "__0_0.distcp: sha256 mismatch (corrupted)")
    assert [d.entry.name for d in decisions if d.delete] == ["step-00000010"]  # 20 and 30 now the newest two
    assert "step-00000020" in proven and proven["step-00000030"] == (30, 1000.0, 30)


def test_plan_on_proof_without_proven_trusts_the_entries(tmp_path):
    """proven=None: the entries were hashed already (prune --verify); nothing is read again."""
    for step in (10, 20):
        _write(tmp_path, step)
    store = _store(tmp_path)
    entries = catalog.scan(store)
    _flip_a_byte(tmp_path / "step-00000020" / "__0_0.distcp")
    entries, decisions = catalog.plan_on_proof(store, entries, keep_last=1)
    assert [d.entry.name for d in decisions if d.delete] == ["step-00000010"]


def test_plan_on_proof_leans_only_on_its_own_lineages(tmp_path):
    _write(tmp_path, 10, seq=1, lineage="mine")
    _write(tmp_path, 20, seq=2, lineage="mine")
    _write(tmp_path, 30, seq=3, lineage="other")
    _flip_a_byte(tmp_path / "step-00000030" / "__0_0.distcp")  # another run's: never hashed or touched
    store = _store(tmp_path)
    proven: dict = {}
    entries, decisions = catalog.plan_on_proof(store, catalog.scan(store), keep_last=1, own_lineages={"mine"},
                                               proven=proven)
    assert list(proven) == ["step-00000020"]
    assert [d.entry.name for d in decisions if d.delete] == ["step-00000010"]
    assert _states(entries)["step-00000030"] == (retention.VERIFIED, None)


# -- the memory tier of a run ---------------------------------------------------------------------------------


def test_memory_tier_is_found_by_the_run_name_in_the_newest_commit(tmp_path):
    store_root, memory = tmp_path / "store", tmp_path / "shm"
    _write(store_root, 10, run_name="old-run")
    _write(store_root, 20, run_name="my-run")
    (store_root / "step-00000030").mkdir()  # uncommitted: no run name to read
    store = _store(store_root)
    rows = catalog.list_checkpoints(store)
    assert catalog.memory_tier_of(store, rows, str(memory)) is None  # no tier on this node
    (memory / "my-run").mkdir(parents=True)
    assert catalog.memory_tier_of(store, rows, str(memory)) is None  # a tier with no snapshot in it
    (memory / "my-run" / "notes").mkdir()
    assert catalog.memory_tier_of(store, rows, str(memory)) is None
    (memory / "my-run" / "step-00000020").mkdir()
    assert catalog.memory_tier_of(store, rows, str(memory)).root == str(memory / "my-run")
    assert catalog.peer_copies_of(catalog.memory_tier_of(store, rows, str(memory))) == []


@pytest.mark.parametrize("run_name", ["../escape", ".", "..", "", 7])
def test_memory_tier_never_follows_a_run_name_that_is_not_a_plain_name(tmp_path, run_name):
    store_root, memory = tmp_path / "store", tmp_path / "shm"
    _write(store_root, 10)
    manifest = Manifest.from_json((store_root / "step-00000010" / COMMIT).read_text())
    manifest.extra["trainer_state"] = {"run_name": run_name}
    (store_root / "step-00000010" / COMMIT).write_text(manifest.to_json())
    for where in (memory / "x", memory, memory / "escape"):  # what ".", ".." and "../escape" would name
        (where / "step-00000010").mkdir(parents=True, exist_ok=True)
    store = _store(store_root)
    assert catalog.memory_tier_of(store, catalog.list_checkpoints(store), str(memory / "x")) is None


def test_memory_tier_of_a_run_checkpoints_uri_without_a_run_name(tmp_path):
    store_root, memory = tmp_path / "runs" / "my-run" / "checkpoints", tmp_path / "shm"
    _write(store_root, 10)
    (memory / "my-run" / "step-00000010").mkdir(parents=True)
    store = _store(store_root)
    tier = catalog.memory_tier_of(store, catalog.list_checkpoints(store), str(memory))
    assert tier is not None and tier.root == str(memory / "my-run")
    other = _store(tmp_path / "runs" / "my-run" / "elsewhere")
    assert catalog.memory_tier_of(other, [], str(memory)) is None


def test_peer_copies_are_listed_by_node(tmp_path):
    tier = tmp_path / "my-run"
    tier.mkdir()
    peers = tmp_path / "my-run.peers"
    for node in ("2", "10", "1"):
        (peers / f"of-node-{node}").mkdir(parents=True)
    (peers / "of-node-3").write_text("a file")
    (peers / "scratch").mkdir()
    copies = catalog.peer_copies_of(_store(tier))
    assert [(node, store.root) for node, store in copies] == [
        ("1", str(peers / "of-node-1")), ("10", str(peers / "of-node-10")), ("2", str(peers / "of-node-2"))]
    assert os.path.isdir(copies[0][1].root)


# -- cases added for mutants the first mutmut run left alive ---------------------------------------------------


def test_memory_tier_follows_the_newest_of_several_run_names(tmp_path):
    store_root, memory = tmp_path / "store", tmp_path / "shm"
    for step, run in ((10, "first"), (20, "second"), (30, "third")):
        _write(store_root, step, run_name=run)
        (memory / run / f"step-{step:08d}").mkdir(parents=True)
    store = _store(store_root)
    assert catalog.memory_tier_of(store, catalog.list_checkpoints(store), str(memory)).root == str(memory / "third")


def test_open_store_passes_the_s3_endpoint_on(monkeypatch):
    pytest.importorskip("s3fs")
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    store = catalog.open_store("s3://bucket/run", "http://127.0.0.1:1", must_exist=False)
    assert store.storage_options == {"endpoint_url": "http://127.0.0.1:1"}
    assert catalog.open_store("s3://bucket/run", must_exist=False).storage_options == {}


def test_point_latest_names_the_os_reason(tmp_path):
    (tmp_path / LATEST).mkdir()
    with pytest.raises(StorageError) as error:
        catalog.point_latest(_store(tmp_path), "step-00000030")
    assert str(error.value) == f"cannot update {tmp_path / LATEST}: Is a directory"


def test_plain_prune_checks_sizes_and_prune_verify_hashes_every_checkpoint(tmp_path):
    """A flipped byte in a checkpoint kept by keep_every is invisible to a size check (it is kept, not leaned
    on, so not hashed); `prune --verify` finds it corrupt and, older than the newest verified, deletes it."""
    for step in (10, 15, 20):
        _write(tmp_path, step)
    _flip_a_byte(tmp_path / "step-00000010" / "__0_0.distcp")
    plain = {d.entry.name: d for d in catalog.prune(_store(tmp_path), keep_last=1, keep_every=10, dry_run=True)}
    assert not plain["step-00000010"].delete and plain["step-00000010"].entry.state == retention.VERIFIED
    hashed = {d.entry.name: d for d in catalog.prune(_store(tmp_path), keep_last=1, keep_every=10, dry_run=True,
                                                     check_hashes=True)}
    assert hashed["step-00000010"].delete and "sha256 mismatch" in hashed["step-00000010"].why
    assert [n for n, d in hashed.items() if d.delete] == ["step-00000010", "step-00000015"]


def test_plan_on_proof_keeps_the_checkpoint_resumed_from(tmp_path):
    for step in (10, 20):
        _write(tmp_path, step)
    store = _store(tmp_path)
    _, decisions = catalog.plan_on_proof(store, catalog.scan(store), keep_last=1, protect=["step-00000020"],
                                         proven={})
    why = {d.entry.name: d.why for d in decisions}
    assert why["step-00000020"] == "resumed from, and no newer checkpoint has verified yet"


def test_resolve_takes_steps_of_up_to_15_digits(tmp_path):
    """Longer digit strings are refused before int() (a 5000-digit argument must not cost a bignum parse): a
    step past MAX_STEP (10**15) cannot be committed anyway."""
    (tmp_path / "step-999999999999999").mkdir()
    (tmp_path / "step-1111111111111111").mkdir()
    assert catalog.resolve(_store(tmp_path), "999999999999999") == "step-999999999999999"
    with pytest.raises(StorageError, match="no checkpoint named '1111111111111111'"):
        catalog.resolve(_store(tmp_path), "1111111111111111")
