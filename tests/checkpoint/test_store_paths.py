"""ddlc.checkpoint.storage in-process: how a URI becomes a root and a filesystem (local path, file://, s3://, the
endpoint settings), every refusal's exact line, listings, bounded and chunked reads, atomic writes (and what they
leave behind when they fail), moves and deletes, and the DCP readers and writers each scheme gets. Local cases on
tmp_path; the S3 cases in a bucket of their own on the session's moto server on 127.0.0.1. These are the fast, exact cases
mutation testing leans on (docs/testing.md); real saves over both schemes are in test_units.py and test_s3.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ddlc.checkpoint import storage
from ddlc.checkpoint.storage import CheckpointStore, FileInfo, StorageError

BUCKET = "store-paths"


@pytest.fixture(scope="module")
def s3(moto):
    """The session's moto server with this module's bucket."""
    moto.create_bucket(BUCKET)
    return moto


@pytest.fixture
def s3_env(s3, monkeypatch):
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return s3


# -- URIs ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri", ["", "   ", None])
def test_an_empty_uri_is_refused(uri):
    with pytest.raises(StorageError) as raised:
        CheckpointStore(uri)
    assert str(raised.value) == "checkpoint URI is empty: give a path, file:///path or s3://bucket/prefix"


@pytest.mark.parametrize("uri, message", [
    ("a\x00b", "checkpoint URI 'a\\x00b': contains a NUL byte"),
    ("file://host/path", "checkpoint URI 'file://host/path': file:// URIs take an absolute path (file:///path)"),
    ("s3://", "checkpoint URI 's3://': missing bucket name (s3://bucket/prefix)"),
    ("s3:///prefix", "checkpoint URI 's3:///prefix': missing bucket name (s3://bucket/prefix)"),
    ("gs://b/p", "checkpoint URI 'gs://b/p': unsupported scheme 'gs://' (use local path, file://, s3://)"),
    ("HTTP://b/p", "checkpoint URI 'HTTP://b/p': unsupported scheme 'http://' (use local path, file://, s3://)"),
])
def test_bad_uris_are_one_exact_line(uri, message):
    with pytest.raises(StorageError) as raised:
        CheckpointStore(uri)
    assert str(raised.value) == message


def test_s3_without_s3fs_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` raises ImportError
    with pytest.raises(StorageError) as raised:
        CheckpointStore("s3://b/p")
    assert str(raised.value) == "checkpoint URI 's3://b/p': s3:// needs s3fs (pip install 'ddlc[s3]')"


def test_local_uris_become_absolute_roots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    odd = str(tmp_path / "run#1?x")  # a local path is never parsed as a URL: '#' and '?' are part of the name
    cases = {"rel/dir": f"{tmp_path}/rel/dir", "~/ck": f"{tmp_path}/home/ck", odd: odd, f"{tmp_path}/a/": f"{tmp_path}/a",
             f"file://{tmp_path}/f": f"{tmp_path}/f", f"FILE://{tmp_path}/g": f"{tmp_path}/g"}
    for uri, root in cases.items():
        store = CheckpointStore(uri)
        assert (store.scheme, store.root, store.storage_options) == ("file", root, {}), uri
    assert CheckpointStore(f"{tmp_path}/a//").uri == f"{tmp_path}/a"
    assert CheckpointStore("/").uri == "/" and CheckpointStore("/").root == "/"


def test_s3_uris_and_where_requests_go(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    store = CheckpointStore("s3://bkt/Xrun-X/")
    assert (store.scheme, store.root, store.uri, store.storage_options) == ("s3", "bkt/Xrun-X", "s3://bkt/Xrun-X", {})
    assert CheckpointStore("s3://bkt").root == "bkt" and CheckpointStore("S3://bkt/p").root == "bkt/p"
    # an fsspec instance of its own, with no listings cache (see storage.py)
    assert store.fs is not CheckpointStore("s3://bkt/Xrun-X/").fs
    assert store.fs.dircache.use_listings_cache is False

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert CheckpointStore("s3://b/p").storage_options == {"endpoint_url": "http://127.0.0.1:1"}
    assert CheckpointStore("s3://b/p").fs.endpoint_url == "http://127.0.0.1:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")  # the S3-specific one wins
    assert CheckpointStore("s3://b/p").storage_options == {"endpoint_url": "http://127.0.0.1:2"}
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    explicit = CheckpointStore("s3://b/p", endpoint_url="http://127.0.0.1:3")  # the argument wins over both
    assert explicit.storage_options == {"endpoint_url": "http://127.0.0.1:3"}
    assert explicit.fs.endpoint_url == "http://127.0.0.1:3"


def test_paths_and_urls(tmp_path):
    local = CheckpointStore(str(tmp_path))
    assert local.path() == str(tmp_path) and local.path("a", "b") == f"{tmp_path}/a/b"
    assert local.url("a") == f"{tmp_path}/a" == local.display("a") and local.url() == str(tmp_path)
    remote = CheckpointStore("s3://bkt/p")
    assert remote.path() == "bkt/p" and remote.path("s", "f") == "bkt/p/s/f"
    assert remote.url("s") == "s3://bkt/p/s" == remote.display("s") and remote.url() == "s3://bkt/p"


# -- local reads, listings, writes -----------------------------------------------------------------------------------

def _tree(root: Path) -> CheckpointStore:
    for name, data in {"step-2/b.bin": b"bb", "step-2/sub/c.bin": b"ccc", "step-2/a.bin": b"",
                       "step-1X/x": b"x", "file-at-root": b"f"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "step-2" / "empty-dir").mkdir()
    (root / "a-dir").mkdir()
    return CheckpointStore(str(root))


def test_listings(tmp_path):
    store = _tree(tmp_path / "root")
    assert store.list_dirs() == ["a-dir", "step-1X", "step-2"]
    assert store.list_files("step-2") == [FileInfo("a.bin", 0), FileInfo("b.bin", 2), FileInfo("sub/c.bin", 3)]
    assert store.list_files("nowhere") == []
    assert CheckpointStore(str(tmp_path / "not-yet")).list_dirs() == []
    assert store.exists("step-2", "b.bin") and not store.exists("step-2", "zz")
    assert store.size("step-2/sub/c.bin") == 3


def test_every_query_drops_cached_listings_first(tmp_path, monkeypatch):
    store = _tree(tmp_path)
    calls = []
    # records, then nothing to drop locally (monkeypatch: fsspec shares the local filesystem instance)
    monkeypatch.setattr(store.fs, "invalidate_cache", lambda *args: calls.append(args))
    store.exists("step-2")
    store.list_dirs()
    store.list_files("step-2")
    assert calls == [(), (), ()]


def test_storage_errors_name_the_uri(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path))

    def denied(*args, **kwargs):
        raise PermissionError("denied")

    for method in ("exists", "ls"):  # what a store without access answers (undone after the test: a shared instance)
        monkeypatch.setattr(store.fs, method, denied)
    with pytest.raises(StorageError) as raised:
        store.exists("a", "b")
    assert str(raised.value) == f"cannot access {tmp_path}/a/b: denied"
    with pytest.raises(StorageError) as raised:
        store.list_dirs()
    assert str(raised.value) == f"cannot list checkpoint URI {tmp_path}: denied"


def test_reads_only_open_regular_files(tmp_path):
    store = _tree(tmp_path)
    (tmp_path / "null").symlink_to("/dev/null")  # a device in place of a file: refused, not read
    for read in (store.read_bytes, store.read_text, store.open, lambda p: list(store.iter_chunks(p))):
        with pytest.raises(IsADirectoryError) as raised:
            read("step-2")
        assert str(raised.value) == f"{tmp_path}/step-2 is a directory"
        with pytest.raises(OSError) as raised:
            read("null")
        assert str(raised.value) == f"{tmp_path}/null is not a regular file"
        with pytest.raises(FileNotFoundError):
            read("step-2/none")


def test_bounded_chunked_and_text_reads(tmp_path):
    store = CheckpointStore(str(tmp_path))
    (tmp_path / "f").write_bytes(b"0123456789")
    assert store.read_bytes("f") == b"0123456789" and store.read_bytes("f", limit=3) == b"012"
    assert list(store.iter_chunks("f", chunk_size=4)) == [b"0123", b"4567", b"89"]
    assert b"".join(store.iter_chunks("f")) == b"0123456789"
    with store.open("f") as handle:
        assert handle.read() == b"0123456789"
    (tmp_path / "t").write_bytes("é\n".encode())
    assert store.read_text("t") == "é\n"
    with store.open("new/deeper/w", "wb") as handle:  # writing: parents made, no regular-file check
        handle.write(b"w")
    assert (tmp_path / "new" / "deeper" / "w").read_bytes() == b"w"


def test_atomic_writes_replace_whole_files_and_leave_nothing_behind(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.write_bytes_atomic("d/e/latest", b"one")
    store.write_bytes_atomic("d/e/latest", b"two")  # the directory exists now: fine
    store.write_text_atomic("d/e/text", "é")
    assert (tmp_path / "d/e/latest").read_bytes() == b"two" and (tmp_path / "d/e/text").read_bytes() == b"\xc3\xa9"
    (tmp_path / "d/e/in-the-way").mkdir()
    (tmp_path / "d/e/in-the-way/x").write_bytes(b"x")
    with pytest.raises(OSError):
        store.write_bytes_atomic("d/e/in-the-way", b"new")
    assert sorted(p.name for p in (tmp_path / "d/e").iterdir()) == ["in-the-way", "latest", "text"]  # no temp file
    storage._fsync_dir(str(tmp_path / "missing"))  # a directory that cannot be opened: nothing to sync


def test_makedirs_move_and_remove(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.makedirs("m", "n")
    store.makedirs("m", "n")
    assert (tmp_path / "m" / "n").is_dir()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"f")
    store.move("src", "a/b/dst")
    assert (tmp_path / "a/b/dst/f").read_bytes() == b"f" and not (tmp_path / "src").exists()
    (tmp_path / "g").write_bytes(b"g")
    store.move("g", "a/b/g")  # into a directory that exists already
    assert (tmp_path / "a/b/g").read_bytes() == b"g"
    store.remove_tree("a")
    assert not (tmp_path / "a").exists()
    store.remove_tree("a")  # gone already: fine


def test_dcp_writer_and_reader_for_a_local_store(tmp_path):
    from ddlc.checkpoint.direct_read import DirectReader
    from ddlc.checkpoint.write_digests import HashingFileSystem

    store = CheckpointStore(str(tmp_path))
    writer = store.dcp_writer("step-1")
    assert str(writer.path) == f"{tmp_path}/step-1" and writer.thread_count == 1
    assert isinstance(writer.fs, HashingFileSystem)
    assert store.dcp_writer("step-1", io_threads=3).thread_count == 3
    reader = store.dcp_reader("step-1")
    assert isinstance(reader, DirectReader) and str(reader.path) == f"{tmp_path}/step-1"
    assert (reader.digest_names, reader.io_threads) == (frozenset(), 1)
    reader = store.dcp_reader("step-1", digest_names=frozenset({"a"}), io_threads=4)
    assert (reader.digest_names, reader.io_threads) == (frozenset({"a"}), 4)


# -- S3 (moto server) ------------------------------------------------------------------------------------------------

def test_s3_reads_writes_moves_and_deletes(s3_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of an S3 store may land on the local disk
    store = CheckpointStore(f"s3://{BUCKET}/run")
    store.makedirs("step-1")  # no directories on S3
    store.write_bytes_atomic("step-1/a.bin", b"aaa")
    store.write_text_atomic("step-1/sub/t", "é")
    assert store.read_bytes("step-1/a.bin") == b"aaa" and store.read_text("step-1/sub/t") == "é"
    assert list(store.iter_chunks("step-1/a.bin", chunk_size=2)) == [b"aa", b"a"]
    assert store.list_dirs() == ["step-1"]
    assert store.list_files("step-1") == [FileInfo("a.bin", 3), FileInfo("sub/t", 2)]
    store.write_bytes_atomic("latest", b"step-1")
    store.write_bytes_atomic("step-10/b", b"b")  # names that start like the moved ones stay where they are
    store.write_bytes_atomic("latest2", b"l")
    store.move("step-1", "moved/step-1")  # a directory (what checkpoint.on_existing=move_aside moves)
    store.move("latest", "moved/latest")  # and one object
    assert store.list_files("moved") == [FileInfo("latest", 6), FileInfo("step-1/a.bin", 3),
                                         FileInfo("step-1/sub/t", 2)]
    assert store.list_files("step-1") == [] and not store.exists("step-1", "a.bin") and not store.exists("latest")
    with pytest.raises(FileNotFoundError) as raised:
        store.move("step-9", "moved/step-9")
    assert str(raised.value) == f"s3://{BUCKET}/run/step-9 does not exist"
    assert store.read_bytes("step-10/b") == b"b" and store.read_bytes("latest2") == b"l"
    store.remove_tree("moved")
    assert store.list_dirs() == ["step-10"]
    assert list(tmp_path.iterdir()) == []


def test_dcp_writer_and_reader_for_s3(s3_env):
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    store = CheckpointStore(f"s3://{BUCKET}/run")
    writer = store.dcp_writer("step-1", io_threads=3)
    assert isinstance(writer, FsspecWriter) and writer.thread_count == 3
    assert str(writer.path) == f"s3://{BUCKET}/run/step-1"
    assert writer.fs.fs.endpoint_url == s3_env.url
    assert store.dcp_writer("step-1").thread_count == 1
    reader = store.dcp_reader("step-1")
    assert isinstance(reader, FsspecReader) and str(reader.path) == f"s3://{BUCKET}/run/step-1"
    assert reader.fs.fs.endpoint_url == s3_env.url


def test_a_fresh_start_moves_an_s3_runs_checkpoints_aside(s3_env):
    """checkpoint.on_existing=move_aside on s3:// (the moves above, as lineage.py makes them)."""
    from ddlc.checkpoint.lineage import prepare_fresh_start

    store = CheckpointStore(f"s3://{BUCKET}/aside-run")
    for name, data in {"step-00000005/COMMIT": b"{}", "step-00000005/__0_0.distcp": b"shard", "latest": b"5"}.items():
        store.write_bytes_atomic(name, data)
    note = prepare_fresh_start(store, "move_aside")
    (aside,) = store.list_dirs()
    assert aside.startswith("previous-") and note.endswith(f"to s3://{BUCKET}/aside-run/{aside}")
    assert store.list_files(aside) == [FileInfo("latest", 1), FileInfo("step-00000005/COMMIT", 2),
                                       FileInfo("step-00000005/__0_0.distcp", 5)]
    assert not store.exists("latest")
