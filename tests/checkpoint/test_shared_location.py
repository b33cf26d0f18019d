"""Every rank must checkpoint to one shared place: two torchrun "nodes" on this machine (--nnodes=2, node_rank 0/1
on 127.0.0.1) get exit 2 and one line when they do not, and train when they do (a shared path, s3:// on moto)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import CONFIG, FAST, TRAIN_PY, child_env, free_port, torchrun

ONE_LINE_HINT = "use s3://bucket/prefix, FSx for Lustre (/fsx/...) or another filesystem every node mounts"


def two_nodes(tmp_path: Path, node_args: tuple[list[str], list[str]], node1_prefix: tuple[str, ...] = (),
              **env: str) -> list[tuple[int, str, str]]:
    """Run a 2-step job as two torchrun nodes (one rank each); [(exit code, stdout, stderr)] per node."""
    port = free_port()
    procs = []
    for node_rank, extra in enumerate(node_args):
        cmd = torchrun("--nnodes=2", f"--node_rank={node_rank}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                       f"--master_port={port}", str(TRAIN_PY), "--config", str(CONFIG), *FAST,
                       "training.max_steps=2", "checkpoint.interval_steps=1", "monitoring.progress=plain",
                       f"monitoring.run_dir={tmp_path / 'runs'}", "monitoring.run_name=shared", *extra)
        prefix = list(node1_prefix) if node_rank == 1 else []
        procs.append(subprocess.Popen(prefix + cmd, cwd=tmp_path, env=child_env(**env), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=420)  # generous: the test machine is shared
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, out, err))
    return results


def assert_refused(results, *expected: str) -> None:
    for code, out, err in results:
        assert code != 0, out + err
        assert "exitcode  : 2" in err, err[-3000:]  # the rank itself exited 2 (torchrun then reports a failure)
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, err[-3000:]  # the one line is in every node's log
        for text in (*expected, ONE_LINE_HINT):
            assert text in lines[0], lines[0]
        assert "step 1" not in out and "| loss" not in out  # stopped before training


def test_each_node_with_its_own_directory_is_refused(tmp_path):
    a, b = tmp_path / "node0-ckpt", tmp_path / "node1-ckpt"
    results = two_nodes(tmp_path, ([f"checkpoint.uri={a}"], [f"checkpoint.uri={b}"]))
    assert_refused(results, "ranks resolve the checkpoint location differently", str(a), str(b), "node 1")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_same_path_on_separate_disks_is_refused(tmp_path):
    """Both nodes name the same path, but node 1 sees its own disk there (a private bind mount): only the probe
    files can tell, and they do."""
    shared, own_disk = tmp_path / "ckpt", tmp_path / "node1-disk"
    shared.mkdir()
    own_disk.mkdir()
    private = ("unshare", "-m", "--propagation", "private", "sh", "-c",
               f"mount --bind {own_disk} {shared} && exec \"$@\"", "sh")
    probe = subprocess.run([*private, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount here: {probe.stderr.strip()}")
    uri = f"checkpoint.uri={shared}"
    results = two_nodes(tmp_path, ([uri], [uri]), node1_prefix=private)
    assert_refused(results, f"checkpoint location {shared} is not shared by all nodes", "node 1", "(rank 1)")
    assert list(shared.iterdir()) == [] and list(own_disk.iterdir()) == []  # probe files removed on both disks


def test_a_shared_path_passes(tmp_path):
    uri = tmp_path / "ckpt"
    results = two_nodes(tmp_path, ([f"checkpoint.uri={uri}"], [f"checkpoint.uri={uri}"]))
    for code, out, err in results:
        assert code == 0, err[-3000:]
    assert (uri / "step-00000002" / "COMMIT").is_file()
    assert not [p for p in uri.iterdir() if p.name.startswith(".ddlc-probe-")]


def test_the_default_location_under_a_shared_run_dir_passes(tmp_path):
    results = two_nodes(tmp_path, ([], []))
    for code, out, err in results:
        assert code == 0, err[-3000:]
    assert (tmp_path / "runs" / "shared" / "checkpoints" / "step-00000002" / "COMMIT").is_file()


def test_s3_passes(tmp_path, moto):
    moto.create_bucket("shared-location")  # this test's own bucket on the session's server
    uri = "checkpoint.uri=s3://shared-location/run"
    results = two_nodes(tmp_path, ([uri], [uri]), **moto.env)
    for code, out, err in results:
        assert code == 0, err[-3000:]
    keys = [o["Key"] for o in moto.client("s3").list_objects_v2(Bucket="shared-location").get("Contents", [])]
    assert "run/step-00000002/COMMIT" in keys
    assert not [k for k in keys if ".ddlc-probe-" in k]  # probe objects removed


def test_checkpointing_off_checks_nothing(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    results = two_nodes(tmp_path, ([f"checkpoint.uri={a}", "checkpoint.enabled=false"],
                                   [f"checkpoint.uri={b}", "checkpoint.enabled=false"]))
    for code, out, err in results:
        assert code == 0, err[-3000:]
