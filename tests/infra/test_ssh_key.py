"""Cluster ssh keys derived from the deploy-time secret: OpenSSH accepts them, every node derives the same
ones, and a real ssh client trusts a real sshd only at the cluster's addresses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddlc.infra import ssh_key
from tests.support import free_port

SECRET = "Zq3" * 22  # what Secrets Manager generates: 64+ alphanumerics


def test_openssh_reads_the_private_keys_and_derives_the_same_public_keys(tmp_path):
    for purpose in ("user", "host"):
        seed = ssh_key.derive_seed(SECRET, purpose)
        path = tmp_path / purpose
        path.write_text(ssh_key.private_key_text(seed))
        path.chmod(0o600)
        result = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[:2] == ssh_key.public_key_line(seed).split()[:2]
    assert ssh_key.derive_seed(SECRET, "user") != ssh_key.derive_seed(SECRET, "host")
    assert ssh_key.derive_seed(SECRET, "user") != ssh_key.derive_seed(SECRET + "x", "user")


def test_rfc8032_test_vector():
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    assert ssh_key.ed25519_public_key(seed).hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


@pytest.mark.parametrize(("cidr", "inside", "outside"), [
    ("10.42.0.0/16", ["10.42.0.5", "10.42.255.1", "ip-10-42-3-4"], ["10.43.0.1", "110.42.0.1", "ip-10-43-0-1"]),
    ("10.42.0.0/20", ["10.42.0.5", "10.42.15.9", "ip-10-42-15-1"], ["10.42.16.1", "10.42.160.1", "ip-10-42-16-1"]),
    ("10.42.5.0/24", ["10.42.5.1"], ["10.42.50.1", "10.42.6.1"]),
])
def test_address_patterns_cover_exactly_the_network(cidr, inside, outside):
    from fnmatch import fnmatchcase

    patterns = ssh_key.address_patterns(cidr)
    for host in inside:
        assert any(fnmatchcase(host, p) for p in patterns), host
    for host in outside:
        assert not any(fnmatchcase(host, p) for p in patterns), host


def test_bad_seed_file_is_exit_2(tmp_path):
    short = tmp_path / "seed"
    short.write_text("too-short\n")
    for args in (["--seed-file", str(tmp_path / "missing")], ["--seed-file", str(short)]):
        result = subprocess.run([sys.executable, "-m", "ddlc.infra.ssh_key", "install", *args, "--cidr", "10.0.0.0/16",
                                 "--root", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


@pytest.mark.skipif(not Path("/usr/sbin/sshd").exists() or os.geteuid() != 0, reason="needs sshd and root")
def test_real_ssh_between_two_nodes_trusts_only_cluster_addresses(tmp_path):
    """Two 'nodes' install from the same secret; node B's sshd serves the cluster host key; node A logs in with
    StrictHostKeyChecking and only the known_hosts file the install wrote."""
    nodes = {}
    for name in ("a", "b"):
        root = tmp_path / name
        seed_file = tmp_path / f"seed-{name}"
        seed_file.write_text(SECRET + "\n")
        result = subprocess.run([sys.executable, "-m", "ddlc.infra.ssh_key", "install", "--seed-file", str(seed_file),
                                 "--cidr", "127.0.0.0/24", "--user", "root", "--root", str(root)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        nodes[name] = root
    a, b = nodes["a"], nodes["b"]
    assert (a / "root/.ssh/ddlc_cluster_ed25519").read_text() == (b / "root/.ssh/ddlc_cluster_ed25519").read_text()
    assert oct((a / "root/.ssh/ddlc_cluster_ed25519").stat().st_mode & 0o777) == "0o600"
    known = (a / "etc/ssh/ddlc_known_hosts").read_text()
    assert known.startswith("127.0.0.*,ip-127-0-0-* ssh-ed25519 ")
    assert "HostKey /etc/ssh/ddlc_cluster_host_ed25519_key" in (b / "etc/ssh/sshd_config.d/ddlc.conf").read_text()

    port = free_port()
    config = tmp_path / "sshd.conf"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {b / 'etc/ssh/ddlc_cluster_host_ed25519_key'}\n"
        f"AuthorizedKeysFile {b / 'root/.ssh/authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
        f"PidFile {tmp_path / 'sshd.pid'}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-f", str(config), "-D", "-e"], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "sshd.log", "w"))
    try:
        def ssh(host: str, known_hosts: Path) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(a / "root/.ssh/ddlc_cluster_ed25519"),
                 "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
                 "-o", "GlobalKnownHostsFile=/dev/null", "-o", "HostKeyAlias=" + host, "-o", "ConnectTimeout=5",
                 "127.0.0.1", "echo", "inside"],
                capture_output=True, text=True, timeout=30)

        deadline = time.monotonic() + 20
        while (result := ssh("127.0.0.1", a / "etc/ssh/ddlc_known_hosts")).returncode != 0:
            assert time.monotonic() < deadline, result.stderr + (tmp_path / "sshd.log").read_text()
            time.sleep(0.3)
        assert result.stdout.strip() == "inside"
        assert ssh("ip-127-0-0-1", a / "etc/ssh/ddlc_known_hosts").returncode == 0
        # The same host key presented under a name outside the cluster's network is not trusted.
        outside = ssh("10.9.9.9", a / "etc/ssh/ddlc_known_hosts")
        assert outside.returncode != 0 and "Host key verification failed" in outside.stderr
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)
