"""One malformed checkpoint never breaks a view of the store: a generated corpus of broken COMMITs and `latest`
pointers through the real `ddlc checkpoints` CLI (list, show, verify, prune, export), plus its argument fuzz."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ddlc.checkpoint import Checkpointer
from ddlc.checkpoint.manifest import COMMIT, parse_commit
from tests.support import PYTHON, run

DDLC = str(Path(PYTHON).parent / "ddlc")
GOOD = [10, 20, 30]


def _good_commit(store: Path) -> dict:
    return json.loads((store / "step-00000030" / COMMIT).read_text())


def _variants(good: dict) -> dict[str, bytes]:
    """COMMIT contents that are each broken in a different way (step 101 upwards)."""
    def with_(**changes) -> bytes:
        return json.dumps({**good, **changes}).encode()

    first = next(iter(good["files"]))
    return {
        "list": b"[1, 2, 3]",
        "scalar": b"42",
        "null": b"null",
        "string": b'"COMMIT"',
        "empty": b"",
        "not-json": b"{not json",
        "non-utf8": b"\xff\xfe\x00garbage\x80",
        "files-list": with_(files=[1, 2]),
        "files-entry-list": with_(files={first: [1, "a"]}),
        "files-entry-missing-sha": with_(files={first: {"size": 3}}),
        "files-size-string": with_(files={first: {"size": "3", "sha256": "0" * 64}}),
        "files-size-huge-float": json.dumps({**good, "files": {first: {"size": 1e308, "sha256": "0" * 64}}}).encode()
        .replace(b"1e+308", b"1e999"),
        "files-size-negative": with_(files={first: {"size": -5, "sha256": "0" * 64}}),
        "files-sha-not-hex": with_(files={first: {"size": 3, "sha256": "z" * 64}}),
        "files-name-traversal": with_(files={"../../etc/passwd": {"size": 3, "sha256": "0" * 64}}),
        "files-name-absolute": with_(files={"/etc/passwd": {"size": 3, "sha256": "0" * 64}}),
        "step-huge-int": json.dumps(good).encode().replace(b'"step": 30', b'"step": 1' + b"0" * 5000),
        "step-bool": with_(step=True),
        "step-mismatch": with_(step=7),
        "world-size-zero": with_(world_size=0),
        "created-nan": json.dumps(good).encode().replace(b'"created": ', b'"created": NaN, "x": '),
        "unknown-format": with_(format="ddlc-checkpoint/99"),
        "unknown-field": with_(surprise={"a": 1}),
        "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
        "extra-not-dict": with_(extra=[1]),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    from ddlc.runtime.distributed import init_distributed

    init_distributed("cpu", "gloo")
    root = tmp_path_factory.mktemp("corpus")
    store = root / "ck"
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    ckpt = Checkpointer(str(store), keep_last=10)
    for step in GOOD:
        ckpt.save(step, model, optimizer, {"step": step}, blocking=True)
    ckpt.close()
    good = _good_commit(store)
    broken: dict[str, str] = {}
    for index, (kind, data) in enumerate(_variants(good).items()):
        name = f"step-{101 + index:08d}"
        shutil.copytree(store / "step-00000030", store / name)
        (store / name / COMMIT).write_bytes(data)
        broken[name] = kind
    name = f"step-{101 + len(broken):08d}"  # COMMIT is a directory
    shutil.copytree(store / "step-00000030", store / name)
    (store / name / COMMIT).unlink()
    (store / name / COMMIT).mkdir()
    broken[name] = "commit-is-directory"
    return store, broken


def test_every_variant_is_unreadable_with_a_one_line_reason(corpus):
    store, broken = corpus
    for name, kind in broken.items():
        if kind == "commit-is-directory":
            continue
        read = parse_commit((store / name / COMMIT).read_bytes(), name)
        assert read.manifest is None and read.reason and "\n" not in read.reason, (kind, read)


def _no_traceback(proc) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]


def test_list_shows_good_checkpoints_and_names_each_bad_one(corpus, tmp_path):
    store, broken = corpus
    proc = run([DDLC, "checkpoints", "list", str(store)], cwd=tmp_path, COLUMNS="400")
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for step in GOOD:
        assert any(f"step-{step:08d}" in line and "committed" in line for line in lines), proc.stdout
    for name in broken:
        assert any(name in line and "unreadable" in line for line in lines), (name, proc.stdout)


def test_verify_fails_the_bad_ones_and_passes_the_good(corpus, tmp_path):
    store, broken = corpus
    proc = run([DDLC, "checkpoints", "verify", str(store)], cwd=tmp_path, COLUMNS="400")
    _no_traceback(proc)
    assert proc.returncode == 1
    for step in GOOD:
        assert f"OK   step-{step:08d}: ok" in proc.stdout
    for name in broken:
        assert f"FAIL {name}: unreadable COMMIT" in proc.stdout, (name, proc.stdout[-2000:])


@pytest.mark.parametrize("which, code", [("30", 0), ("step-00000101", 1), ("step-00000126", 1), ("²", 2),
                                         ("9" * 5000, 2), ("../ck/step-00000030", 2), ("", 2)])
def test_show(corpus, tmp_path, which, code):
    store, _ = corpus
    proc = run([DDLC, "checkpoints", "show", str(store), which], cwd=tmp_path)
    _no_traceback(proc)
    assert proc.returncode == code, proc.stdout + proc.stderr
    if code:
        assert len((proc.stdout + proc.stderr).strip().splitlines()) == 1, proc.stdout + proc.stderr
    else:
        assert json.loads(proc.stdout)["step"] == 30


def test_prune_keeps_unreadable_ones_and_the_newest_verified(corpus, tmp_path):
    store, broken = corpus
    copy = tmp_path / "ck"
    shutil.copytree(store, copy, symlinks=True)
    proc = run([DDLC, "checkpoints", "prune", str(copy), "--keep-last", "1"], cwd=tmp_path, COLUMNS="400")
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    left = sorted(p.name for p in copy.glob("step-*"))
    assert left == sorted(["step-00000030", *broken]), left


@pytest.mark.parametrize("content", ["../outside/step-00000030", "/etc", "\udcff garbage"])
def test_latest_is_only_a_name_inside_the_root(tmp_path, corpus, content):
    """A `latest` that leaves the root is never followed: export reads the newest verified checkpoint instead."""
    store, _ = corpus
    root = tmp_path / "root"
    inside = root / "ck"
    inside.mkdir(parents=True)
    shutil.copytree(store / "step-00000020", inside / "step-00000020")
    outside = root / "outside" / "step-00000030"  # a checkpoint outside the root, which must not be read
    shutil.copytree(store / "step-00000030", outside)
    (inside / "latest").write_bytes(content.encode("utf-8", "surrogateescape"))
    proc = run([DDLC, "checkpoints", "export", str(inside), "-o", str(tmp_path / "w.pt")], cwd=tmp_path, COLUMNS="400")
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert f"from {inside / 'step-00000020'}" in proc.stdout, proc.stdout


@pytest.mark.parametrize("args", [["export", "{store}", "--format", "nope", "-o", "{tmp}/x.pt"], ["list", ""],
                                  ["verify", ""], ["show", "", "latest"], ["prune", "", "--keep-last", "1"],
                                  ["list", "{tmp}/missing"], ["export", "{store}", "²", "-o", "{tmp}/x.pt"]])
def test_bad_arguments_exit_2_with_one_line(corpus, tmp_path, args):
    store, _ = corpus
    argv = [a.format(store=store, tmp=tmp_path) for a in args]
    proc = run([DDLC, "checkpoints", *argv], cwd=tmp_path)
    _no_traceback(proc)
    assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("output", ["/proc/ddlc-export.pt", "/proc/ddlc-export.safetensors", "{tmp}",
                                    "{tmp}/a-file/x.pt"])
def test_export_to_an_unwritable_output_is_one_line(corpus, tmp_path, output):
    """An output that cannot be written (no such directory under /proc, a directory, a path under a file) is a bad
    argument: exit 2 and one line, never torch's or safetensors' traceback."""
    store, _ = corpus
    (tmp_path / "a-file").write_text("x")
    proc = run([DDLC, "checkpoints", "export", str(store), "-o", output.format(tmp=tmp_path)], cwd=tmp_path)
    _no_traceback(proc)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: --output") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("verb", [["list"], ["verify"], ["show", "latest"], ["prune", "--keep-last", "1"]])
def test_a_uri_that_is_a_file_is_refused(tmp_path, verb):
    """A URI naming a regular file used to list as an empty store with exit 0, hiding a mistyped path."""
    uri = tmp_path / "not-a-store"
    uri.write_text("hello")
    argv = [verb[0], str(uri), *verb[1:]]
    proc = run([DDLC, "checkpoints", *argv], cwd=tmp_path)
    _no_traceback(proc)
    assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
    assert "is a file" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert uri.read_text() == "hello"


def test_prune_hashes_the_checkpoints_it_keeps_before_deleting_older_ones(corpus, tmp_path):
    """A same-size flipped byte in the newest checkpoint passes the size check: plain `prune --keep-last 1` used to
    keep only that corrupt one and delete every good one. The kept ones are hashed before anything is deleted."""
    store, _ = corpus
    copy = tmp_path / "ck"
    copy.mkdir()
    for step in GOOD:
        shutil.copytree(store / f"step-{step:08d}", copy / f"step-{step:08d}")
    newest = copy / "step-00000040"
    shutil.copytree(copy / "step-00000030", newest)
    commit = json.loads((newest / COMMIT).read_text())
    commit["step"], commit["extra"]["seq"] = 40, commit["extra"]["seq"] + 1
    (newest / COMMIT).write_text(json.dumps(commit))
    shard = next(newest.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (copy / "latest").write_text("step-00000040")
    proc = run([DDLC, "checkpoints", "prune", str(copy), "--keep-last", "1"], cwd=tmp_path, COLUMNS="400")
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert (copy / "step-00000030").is_dir() and newest.is_dir(), proc.stdout  # the good one and the evidence stay
    assert not (copy / "step-00000010").exists() and not (copy / "step-00000020").exists(), proc.stdout
    assert (copy / "latest").read_text().strip() == "step-00000030"
    verify = run([DDLC, "checkpoints", "verify", str(copy)], cwd=tmp_path, COLUMNS="400")
    assert "OK   step-00000030" in verify.stdout, verify.stdout


# What the reading verbs run with: the same command line, with a hook that says at exit whether torch was imported.
_TORCH_AT_EXIT = ("import atexit, sys\n"
                  "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, file=sys.stderr))\n"
                  "sys.argv = ['ddlc', *sys.argv[1:]]\n"
                  "from ddlc.cli.main import run\n"
                  "run()\n")


@pytest.mark.parametrize("verb", [["list"], ["show", "{store}", "latest"], ["verify"],
                                  ["prune", "{store}", "--keep-last", "1", "--dry-run"]])
def test_reading_verbs_never_import_torch(corpus, tmp_path, verb):
    """docs/checkpointing.md: `list`, `show`, `verify` and `prune` do not import torch (seconds on every call)."""
    store, _ = corpus
    good = tmp_path / "ck"
    for step in GOOD:
        shutil.copytree(store / f"step-{step:08d}", good / f"step-{step:08d}")
    (good / "latest").write_text("step-00000030")
    args = [a.format(store=good) for a in verb] if len(verb) > 1 else [*verb, str(good)]
    proc = run([PYTHON, "-c", _TORCH_AT_EXIT, "checkpoints", *args], cwd=tmp_path, COLUMNS="400")
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step-00000030" in proc.stdout or '"step": 30' in proc.stdout, proc.stdout  # it did its work
    assert "torch imported: False" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("fifo", ["commit", "latest"])
@pytest.mark.parametrize("verb", [["list"], ["verify"], ["show", "30"], ["prune", "--keep-last", "1", "--dry-run"]])
def test_a_fifo_in_place_of_commit_or_latest_never_blocks_a_reader(corpus, tmp_path, fifo, verb):
    """Opening a FIFO blocks until a writer comes: every reader (and `ddlc train`'s resume) hung forever on one.
    Now only regular files are opened; that checkpoint is unreadable, the others are shown as usual."""
    import os

    store, _ = corpus
    copy = tmp_path / "ck"
    for step in GOOD:
        shutil.copytree(store / f"step-{step:08d}", copy / f"step-{step:08d}")
    target = copy / "step-00000030" / COMMIT if fifo == "commit" else copy / "latest"
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    proc = run([DDLC, "checkpoints", verb[0], str(copy), *verb[1:]], cwd=tmp_path, timeout=60, COLUMNS="400")
    _no_traceback(proc)
    if verb[0] != "show":
        assert "step-00000020" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    if fifo == "commit" and verb[0] in ("verify", "show"):
        assert proc.returncode == 1 and "not a regular file" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
