"""ddlc.checkpoint.manifest on hand-built step directories (no torch, no DCP): the exact reason `read_commit` gives
for each way a COMMIT can be unreadable, which names a COMMIT may list, step directory names, hashing (several files
on named threads, files of more than one read chunk), `verify`'s problems in their order and `check_file`. Real
files under tmp_path; the same code runs under real saves in test_units.py and test_verify_paths.py. These cases
are the fast, exact ones mutation testing leans on (docs/testing.md)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from ddlc.checkpoint import manifest as mf
from ddlc.checkpoint.manifest import (COMMIT, MAX_COMMIT_BYTES, CommitRead, Manifest, VerifyResult, check_file,
                                      hash_files, parse_commit, parse_step, read_commit, read_manifest, verify)
from ddlc.checkpoint.storage import CheckpointStore

DIR = "step-00000001"
ZERO = "0" * 64


def _digest(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _good() -> dict:
    return json.loads(Manifest(step=1, files={"a.bin": {"size": 3, "sha256": ZERO}}, world_size=1,
                               created=1.5).to_json())


def _reason(raw, directory: str = DIR) -> str:
    read = parse_commit(raw if isinstance(raw, bytes) else json.dumps(raw).encode(), directory)
    assert read.directory == directory and read.manifest is None and read.state == "unreadable"
    return read.reason


# -- names -------------------------------------------------------------------------------------------------------

def test_step_directory_names():
    assert parse_step("step-00000120") == 120
    assert parse_step("step-" + "9" * 35) == int("9" * 35)  # 40 characters: still a name
    assert parse_step("step-" + "9" * 36) is None  # 41: refused before the regex runs
    for other in ("step-0000012", "step-00000120x", "latest", "", None, 5):
        assert parse_step(other) is None, other


@pytest.mark.parametrize("name", ["", "/abs", "a\\b", "a\x00b", "a//b", "a/./b", "a/../b", "../x", ".", "COMMIT",
                                  "x" * 1025])
def test_names_that_leave_the_directory_or_hide_commit_are_refused(name):
    assert _reason({**_good(), "files": {name: {"size": 3, "sha256": ZERO}}}) == (
        f"COMMIT files: Value error, file name {name[:80]!r} is not a plain name inside the checkpoint directory")


@pytest.mark.parametrize("name", ["a.bin", "sub/COMMIT", "x" * 1024, ".metadata", "dir/.hidden", "a..b"])
def test_plain_names_are_listed(name):
    read = parse_commit(json.dumps({**_good(), "files": {name: {"size": 3, "sha256": ZERO}}}).encode(), DIR)
    assert read.state == "committed" and list(read.manifest.files) == [name], read.reason


# -- COMMIT bytes to a manifest or a one-line reason -----------------------------------------------------------------

def test_a_good_commit_reads_back_as_the_manifest_written():
    text = Manifest(step=1, files={"a.bin": {"size": 3, "sha256": ZERO}}, world_size=1, created=1.5).to_json()
    read = parse_commit(text.encode(), DIR)
    assert read.state == "committed" and read.reason is None and read.directory == DIR
    assert read.manifest.model_dump() == json.loads(text)
    assert Manifest.from_json(text) == read.manifest
    without_format = {k: v for k, v in json.loads(text).items() if k != "format"}  # the format defaults to ours
    assert parse_commit(json.dumps(without_format).encode(), "anything").manifest.step == 1


def test_commit_text_is_sorted_indented_json():
    text = Manifest(step=1, files={"a.bin": {"size": 3, "sha256": ZERO}}, world_size=1, created=1.5).to_json()
    lines = text.splitlines()
    assert lines[0] == "{" and lines[1] == '  "created": 1.5,' and lines[-1] == "}"
    keys = [line.split('"')[1] for line in lines if line.startswith('  "')]
    assert keys == ["created", "ddlc_version", "extra", "files", "format", "step", "world_size"]


@pytest.mark.parametrize("data, reason", [
    (b"[]", "COMMIT holds an array, not an object"),
    (b'"x"', "COMMIT holds a string, not an object"),
    (b"true", "COMMIT holds a boolean, not an object"),
    (b"1", "COMMIT holds a number, not an object"),
    (b"1.5", "COMMIT holds a number, not an object"),
    (b"null", "COMMIT holds null, not an object"),
    (b'{"a": "\xff"}', "COMMIT is not UTF-8 (byte 7)"),
    (b"", "COMMIT is not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b'{"step": 1' + b"1" * 5000 + b"}",  # Python's error is longer than 120 characters: cut there
     "COMMIT is not JSON: Exceeds the limit (4300 digits) for integer string conversion: value has 5001 digits; "
     "use sys.set_int_max_str_digits() t"),
])
def test_each_unreadable_commit_has_its_exact_reason(data, reason):
    assert _reason(data) == reason


def test_format_and_fields_are_named_in_the_reason():
    good = _good()
    assert _reason({**good, "format": "ddlc-checkpoint/2"}) == "unknown checkpoint format 'ddlc-checkpoint/2'"
    assert _reason({**good, "format": "x" * 100}) == f"unknown checkpoint format {'x' * 60!r}"
    assert _reason({**good, "step": "1"}) == "COMMIT step: Input should be a valid integer"
    assert _reason({**good, "extra": {"lineage": 5}}) == "COMMIT extra: Value error, extra.lineage is not a lineage id"
    long_name = "a" * 300  # the field path of a bad hash under a long name: the reason is cut at 200 characters
    assert _reason({**good, "files": {long_name: {"size": 3, "sha256": "bad"}}}) == "COMMIT " + f"files.{long_name}"[:200]


def test_a_model_level_error_is_blamed_on_commit():
    with pytest.raises(ValidationError) as raised:
        Manifest.model_validate([])
    assert mf._first_error(raised.value) == "COMMIT: Input should be a valid dictionary or instance of Manifest"


def test_the_step_in_commit_must_match_its_directory():
    assert _reason(_good(), "step-00000002") == "COMMIT says step 1, the directory is step-00000002"
    assert parse_commit(json.dumps(_good()).encode(), "elsewhere").state == "committed"


def test_size_limit_is_checked_before_decoding():
    assert _reason(b" " * (MAX_COMMIT_BYTES + 1)) == (
        f"COMMIT is larger than {MAX_COMMIT_BYTES} bytes, more than any manifest ddlc writes")
    # exactly the limit: decoded (and refused as JSON, not for its size)
    assert _reason(b" " * MAX_COMMIT_BYTES).startswith("COMMIT is not JSON: Expecting value")


# -- reading COMMIT from a store ------------------------------------------------------------------------------------

def test_read_commit_from_disk(tmp_path):
    root = tmp_path / ("r" * 200)  # a long path: the OS reason is cut at 160 characters
    (root / DIR).mkdir(parents=True)
    store = CheckpointStore(str(root))
    missing = read_commit(store, DIR)
    assert (missing.directory, missing.manifest, missing.reason, missing.state) == (DIR, None, None, "uncommitted")
    assert read_manifest(store, DIR) is None

    (root / DIR / COMMIT).mkdir()
    read = read_commit(store, DIR)
    assert (read.directory, read.reason) == (DIR, "COMMIT is a directory, not a file")
    (root / DIR / COMMIT).rmdir()

    os.mkfifo(root / DIR / COMMIT)  # never opened: a reader would block on it
    read = read_commit(store, DIR)
    message = f"{root}/{DIR}/{COMMIT} is not a regular file"
    assert (read.directory, read.reason) == (DIR, f"COMMIT cannot be read: OSError: {message[:160]}")
    (root / DIR / COMMIT).unlink()

    (root / DIR / COMMIT).write_text(json.dumps(_good()))
    read = read_commit(store, DIR)
    assert read.directory == DIR and read.state == "committed"
    assert read_manifest(store, DIR) == read.manifest and read.manifest.step == 1

    (root / DIR / COMMIT).write_bytes(b" " * (MAX_COMMIT_BYTES + 1))  # read bounded, still refused for its size
    assert read_commit(store, DIR).reason.startswith(f"COMMIT is larger than {MAX_COMMIT_BYTES} bytes")


# -- hashing --------------------------------------------------------------------------------------------------------

class _ThreadRecordingStore(CheckpointStore):
    """The local store, noting which thread read each file."""

    def __init__(self, uri: str):
        super().__init__(uri)
        self.threads: dict[str, str] = {}

    def iter_chunks(self, relpath: str, chunk_size: int = 8 << 20):
        self.threads[relpath] = threading.current_thread().name
        yield from super().iter_chunks(relpath, chunk_size)


def test_hash_files_hashes_several_files_on_named_threads(tmp_path):
    files = {"big.bin": os.urandom((8 << 20) + 5), "b.bin": b"bee", "empty": b""}  # big: more than one read chunk
    for name, data in files.items():
        (tmp_path / DIR / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / DIR / name).write_bytes(data)
    store = _ThreadRecordingStore(str(tmp_path))
    names = ["big.bin", "b.bin"]
    assert hash_files(store, DIR, names) == {name: _digest(files[name]) for name in names}
    assert all(store.threads[f"{DIR}/{name}"].startswith("ddlc-sha256") for name in names), store.threads
    one = _ThreadRecordingStore(str(tmp_path))  # one file: hashed right here, no pool
    assert hash_files(one, DIR, ["empty"]) == {"empty": _digest(b"")}
    assert one.threads == {f"{DIR}/empty": threading.current_thread().name}
    assert hash_files(store, DIR, []) == {}


def test_hash_threads_are_bounded_by_files_cores_and_8(monkeypatch):
    monkeypatch.setattr(mf.os, "cpu_count", lambda: 16)
    assert [mf._hash_threads(n) for n in (0, 1, 3, 8, 100)] == [1, 1, 3, 8, 8]
    monkeypatch.setattr(mf.os, "cpu_count", lambda: 2)
    assert [mf._hash_threads(n) for n in (1, 5)] == [1, 2]
    monkeypatch.setattr(mf.os, "cpu_count", lambda: None)  # unknown: one thread
    assert mf._hash_threads(5) == 1


# -- verify and check_file ------------------------------------------------------------------------------------------

def _checkpoint(root: Path, files: dict[str, bytes], listed: dict[str, bytes] | None = None) -> CheckpointStore:
    """A step directory holding `files`, with a COMMIT listing `listed` (default: the same files)."""
    for name, data in files.items():
        (root / DIR / name).parent.mkdir(parents=True, exist_ok=True)
        (root / DIR / name).write_bytes(data)
    listed = files if listed is None else listed
    text = Manifest(step=1, files={n: _digest(d) for n, d in listed.items()}, world_size=1).to_json()
    (root / DIR / COMMIT).write_text(text)
    return CheckpointStore(str(root))


def test_verify_names_every_problem_sizes_first_then_hashes(tmp_path):
    recorded = {"a.bin": b"aaa", "b.bin": b"bbb", "c.bin": b"ccc", "d/e.bin": b"eee"}
    on_disk = {"a.bin": b"aXa", "c.bin": b"cccc", "d/e.bin": b"eee", "extra.bin": b"not listed"}
    store = _checkpoint(tmp_path, on_disk, listed=recorded)
    result = verify(store, DIR)
    assert result.ok is False and result.directory == DIR and result.manifest == read_manifest(store, DIR)
    assert result.problems == ["b.bin: missing", "c.bin: size 4 != 3 (truncated or overwritten)",
                               "a.bin: sha256 mismatch (corrupted)"]
    assert result.summary() == "; ".join(result.problems)
    quick = verify(store, DIR, check_hashes=False)  # sizes only: the flipped byte goes unseen
    assert quick.problems == ["b.bin: missing", "c.bin: size 4 != 3 (truncated or overwritten)"]


def test_verify_of_a_good_checkpoint(tmp_path):
    store = _checkpoint(tmp_path, {"a.bin": b"aaa", "b.bin": b"bbb"})
    result = verify(store, DIR)
    assert (result.ok, result.problems, result.directory, result.summary()) == (True, [], DIR, "ok")
    assert result.manifest == read_manifest(store, DIR)


def test_verify_uses_the_commit_it_is_given(tmp_path):
    store = _checkpoint(tmp_path, {"a.bin": b"aaa"}, listed={"a.bin": b"aaa", "gone.bin": b"g"})
    assert verify(store, DIR).problems == ["gone.bin: missing"]
    given = parse_commit(Manifest(step=1, files={"a.bin": _digest(b"aaa")}, world_size=1).to_json().encode(), DIR)
    result = verify(store, DIR, commit=given)
    assert result.ok is True and result.manifest is given.manifest


@pytest.mark.parametrize("commit, problem", [
    (None, "not committed (no COMMIT marker)"),
    (b"[]", "unreadable COMMIT: COMMIT holds an array, not an object"),
])
def test_verify_without_a_readable_commit(tmp_path, commit, problem):
    (tmp_path / DIR).mkdir()
    (tmp_path / DIR / "a.bin").write_bytes(b"aaa")
    if commit is not None:
        (tmp_path / DIR / COMMIT).write_bytes(commit)
    result = verify(CheckpointStore(str(tmp_path)), DIR)
    assert (result.directory, result.ok, result.problems, result.manifest) == (DIR, False, [problem], None)
    assert result.summary() == problem


def test_verify_reports_a_file_it_cannot_read(tmp_path):
    root = tmp_path / ("r" * 200)
    store = _checkpoint(root, {"a.bin": b"aaa"}, listed={"a.bin": b"aaa", "fifo": b""})
    os.mkfifo(root / DIR / "fifo")  # listed with size 0 and the size matches: hashing it must not block
    result = verify(store, DIR)
    message = f"{root}/{DIR}/fifo is not a regular file"
    assert result.ok is False and result.problems == [f"cannot be read: OSError: {message[:160]}"]


class _FailingListing(CheckpointStore):
    def list_files(self, directory):
        raise ConnectionError()  # an error without a message


def test_verify_reports_a_storage_error_without_a_message(tmp_path):
    _checkpoint(tmp_path, {"a.bin": b"aaa"})
    result = verify(_FailingListing(str(tmp_path)), DIR)
    assert (result.ok, result.problems) == (False, ["cannot be read: ConnectionError: "])


def test_check_file_each_way(tmp_path):
    store = _checkpoint(tmp_path, {"a.bin": b"aaa", "b.bin": b"bbb", "c.bin": b"ccc"})
    manifest = read_manifest(store, DIR)
    assert check_file(store, DIR, manifest, "a.bin") is None
    assert check_file(store, DIR, manifest, "z.bin") == "z.bin: not listed in COMMIT"
    (tmp_path / DIR / "a.bin").unlink()
    assert check_file(store, DIR, manifest, "a.bin") == "a.bin: missing"
    (tmp_path / DIR / "b.bin").write_bytes(b"bbbb")
    assert check_file(store, DIR, manifest, "b.bin") == "b.bin: size 4 != 3 (truncated or overwritten)"
    (tmp_path / DIR / "c.bin").write_bytes(b"cXc")
    assert check_file(store, DIR, manifest, "c.bin") == "c.bin: sha256 mismatch (corrupted)"


def test_summary_and_state_words():
    assert VerifyResult(DIR, True, []).summary() == "ok"
    assert VerifyResult(DIR, False, ["x: missing", "y: missing"]).summary() == "x: missing; y: missing"
    assert CommitRead(DIR).state == "uncommitted"
    assert CommitRead(DIR, reason="r").state == "unreadable"
