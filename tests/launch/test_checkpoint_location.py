"""`ddlc launch` refuses, before any node starts, a job whose local checkpoint location the nodes do not share.

Host b of the two test hosts gets "its own disk" at the job's checkpoint path: a bind mount made inside the mount
namespace of host b's sshd, so only sessions on host b see it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ddlc.launch.checkpoint_location import configured_location
from tests.launch.helpers import DDLC
from tests.support import CONFIG, FAST, REPO, TRAIN_PY, child_env


def launch_train(hosts, *overrides: str, timeout: float = 420) -> subprocess.CompletedProcess:
    argv = hosts.in_head([*DDLC, "launch", "--engine", "torchrun", "--hostfile", str(hosts.hostfile()),
                          *hosts.ssh_options(), "--env-profile", "none", "--env", f"GLOO_SOCKET_IFNAME={hosts.nic}",
                          str(TRAIN_PY), "--", "--config", str(CONFIG), *FAST, "monitoring.progress=plain",
                          *overrides])
    env = child_env(PYTHONPATH=str(REPO / "src"))
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_nodes_with_their_own_disk_at_the_path_are_refused_before_starting(hosts, tmp_path):
    shared, own = tmp_path / "ckpt", tmp_path / "host-b-disk"
    shared.mkdir()
    own.mkdir()
    sshd_b = str(hosts.sshd[1].pid)
    subprocess.run(["nsenter", "-t", sshd_b, "-m", "mount", "--bind", str(own), str(shared)], check=True)
    try:
        proc = launch_train(hosts, f"checkpoint.uri={shared}", "training.max_steps=2")
    finally:
        subprocess.run(["nsenter", "-t", sshd_b, "-m", "umount", str(shared)], check=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: checkpoint location {shared} is not shared by all nodes: {hosts.addresses[1]} "
                           f"cannot see the files {hosts.addresses[0]} writes there"), line
    assert "s3://" in line and "/fsx/" in line and "Traceback" not in proc.stderr
    assert "ddlc: run" not in proc.stdout  # no node started training
    assert list(shared.iterdir()) == [] and list(own.iterdir()) == []  # probes removed on both disks


def test_a_shared_run_directory_passes(hosts, tmp_path):
    proc = launch_train(hosts, f"monitoring.run_dir={tmp_path}", "monitoring.run_name=launch-shared",
                        "training.max_steps=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "launch-shared" / "checkpoints" / "step-00000002" / "COMMIT").is_file()


def test_configured_location(tmp_path):
    config = str(CONFIG)
    assert configured_location(["--config", config, "checkpoint.uri=/fsx/ckpt"], str(tmp_path)) == "/fsx/ckpt"
    assert configured_location(["--config", config, "checkpoint.uri=file:///fsx/c"], str(tmp_path)) == "/fsx/c"
    assert configured_location(["--config", config, "checkpoint.uri=s3://b/p"], str(tmp_path)) is None
    assert configured_location(["--config", config, "checkpoint.enabled=false"], str(tmp_path)) is None
    assert configured_location(["--config", config, "monitoring.run_dir=/shared/runs"], str(tmp_path)) == "/shared/runs"
    assert configured_location(["out.pt", config], str(tmp_path)) is None  # not train.py's arguments
    relative = Path(config).relative_to(REPO)
    assert configured_location(["--config", str(relative), "monitoring.run_dir=r"], str(REPO)) == "r"
