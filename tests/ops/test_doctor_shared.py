"""`ddlc doctor --hostfile`: every host must see the checkpoint location this host writes (the probe training
runs at start, here over the doctor's host runner). A host "with its own disk" is a real private mount namespace
in which the location is bind-mounted to another directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ddlc.ops import doctor
from ddlc.ops.doctor import SshRunner, Status
from tests.ops.conftest import BUCKET


class OwnDiskRunner(SshRunner):
    """Runs commands locally; on `host` they run in a private mount namespace where `path` is `own_disk`."""

    def __init__(self, host: str, path: Path, own_disk: Path):
        super().__init__(local_hosts={"localhost", "127.0.0.1", host})
        self.host, self.path, self.own_disk = host, path, own_disk

    def command(self, host, argv):
        if host != self.host:
            return super().command(host, argv)
        return ["unshare", "-m", "--propagation", "private", "sh", "-c",
                f'mount --bind {self.own_disk} {self.path} && exec "$@"', "sh", *argv]


def own_disk_runner(tmp_path: Path, host: str) -> tuple[OwnDiskRunner, Path, Path]:
    shared, own = tmp_path / "ckpt", tmp_path / "own-disk"
    shared.mkdir()
    own.mkdir()
    runner = OwnDiskRunner(host, shared, own)
    if shutil.which("unshare") is None or subprocess.run(runner.command(host, ["true"])).returncode != 0:
        pytest.skip("cannot make a private mount namespace here")
    return runner, shared, own


def test_a_host_with_its_own_disk_fails_naming_it(tmp_path):
    runner, shared, own = own_disk_runner(tmp_path, "node-b")
    result = doctor.check_shared_checkpoint(str(shared), ["localhost", "node-b"], runner, sys.executable)
    assert result.status is Status.FAIL, result
    assert f"checkpoint location {shared} is not shared by all nodes: node-b cannot see the files this host writes there" in result.detail
    assert "localhost" not in result.detail
    assert "s3://" in result.fix and "/fsx/" in result.fix
    assert result.doc.endswith("#checkpoint-location-not-shared-by-all-nodes")
    assert list(shared.iterdir()) == [] and list(own.iterdir()) == []  # probes removed on both "disks"


def test_a_shared_directory_passes_and_a_relative_path_is_taken_from_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctor.check_shared_checkpoint("runs/ckpt", ["localhost", "127.0.0.1"], SshRunner(), sys.executable)
    assert result.status is Status.PASS, result
    assert not list((tmp_path / "runs" / "ckpt").iterdir())


def test_s3_passes(moto, monkeypatch):
    for key, value in moto.env.items():
        monkeypatch.setenv(key, value)
    result = doctor.check_shared_checkpoint(f"s3://{BUCKET}/shared", ["localhost"], SshRunner(), sys.executable)
    assert result.status is Status.PASS, result


def test_an_unreachable_host_is_reported_not_passed(tmp_path):
    result = doctor.check_shared_checkpoint(str(tmp_path), ["no-such-host.invalid"], SshRunner(), sys.executable)
    assert result.status is Status.FAIL and "could not probe no-such-host.invalid (" in result.detail, result
    broken = doctor.check_shared_checkpoint(str(tmp_path), ["localhost"], SshRunner(), "/no/such/python")
    assert broken.status is Status.FAIL and "could not probe this host" in broken.detail, broken


def test_skipped_without_hostfile_or_uri(tmp_path):
    assert doctor.check_shared_checkpoint(str(tmp_path), None, SshRunner(), sys.executable).status is Status.SKIP
    assert doctor.check_shared_checkpoint(None, ["localhost"], SshRunner(), sys.executable).status is Status.SKIP


def test_run_checks_includes_it(tmp_path):
    runner, shared, _ = own_disk_runner(tmp_path, "node-b")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\nnode-b slots=1\n")
    options = doctor.DoctorOptions(environ={}, cluster_env_file=tmp_path / "none", checkpoint_uri=str(shared),
                                   hostfile=hostfile, runner=runner, min_free_gb=0, interfaces=["lo"],
                                   master_port=1)
    checks = {r.name: r for r in doctor.run_checks(options)}
    assert checks["checkpoint-shared"].status is Status.FAIL and "node-b" in checks["checkpoint-shared"].detail
