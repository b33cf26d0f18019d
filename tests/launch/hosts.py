"""Two real hosts for multi-node tests: network namespaces joined by a veth pair, each running its own sshd.

Addresses 10.213.0.1/24 and 10.213.0.2/24 exist only inside the two namespaces, so test traffic cannot leave
them. Both ends of the veth are named `ddlc0`, so GLOO_SOCKET_IFNAME=ddlc0 is right on either host.

Like a real cluster node, each host's name resolves to its own cluster address: `ip netns exec` bind-mounts
/etc/netns/<namespace>/hosts over /etc/hosts, and ours maps this machine's hostname (which both namespaces share)
to the namespace's address. Without it the hostname resolves to 127.0.0.1, which Horovod 0.28.1 ends up
announcing to its peers (docs/launch.md, known limitations).
Everything is torn down in `close()`, which runs even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SSH_PORT = 2222
NIC = "ddlc0"
NETNS_ETC = Path("/etc/netns")  # per-namespace configuration files, see ip-netns(8)


def netns_unavailable() -> str | None:
    """Why the namespace test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    for tool in ("ip", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not Path("/usr/sbin/sshd").exists():
        return "openssh-server not installed (make sysdeps)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class TwoHosts:
    def __init__(self):
        tag = f"{os.getpid() % 100000}"
        self.namespaces = [f"ddlc{tag}a", f"ddlc{tag}b"]
        self.addresses = ["10.213.0.1", "10.213.0.2"]
        self.nic = NIC
        self.dir = Path(tempfile.mkdtemp(prefix="ddlc-hosts-"))
        self.key = self.dir / "id_ed25519"
        self.sshd: list[subprocess.Popen] = []
        try:
            self._network()
            self._sshd()
        except BaseException:
            self.close()
            raise

    def _network(self) -> None:
        a, b = self.namespaces
        for ns in self.namespaces:
            _ip("netns", "add", ns)
        tmp_a, tmp_b = f"v{a}"[:15], f"v{b}"[:15]
        _ip("link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        for ns, link, addr in ((a, tmp_a, self.addresses[0]), (b, tmp_b, self.addresses[1])):
            _ip("link", "set", link, "netns", ns)
            _ip("-n", ns, "link", "set", link, "name", NIC)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", NIC)
            _ip("-n", ns, "link", "set", NIC, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self.resolve_hostname_to(ns, addr)

    def resolve_hostname_to(self, namespace: str, address: str) -> None:
        """Make this machine's hostname resolve to `address` on that host (rewritten in place: running sshds
        keep /etc/netns/<namespace>/hosts bind-mounted, so new sessions see the change)."""
        etc = NETNS_ETC / namespace
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost ip6-localhost\n{address} {socket.gethostname()}\n")

    def _sshd(self) -> None:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / "host_key")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        shutil.copy(self.key.with_suffix(".pub"), self.dir / "authorized_keys")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        for index, (ns, addr) in enumerate(zip(self.namespaces, self.addresses)):
            config = self.dir / f"sshd{index}.conf"
            config.write_text(
                f"Port {SSH_PORT}\nListenAddress {addr}\nHostKey {self.dir / 'host_key'}\n"
                f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
                f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
                f"PidFile {self.dir / f'sshd{index}.pid'}\nMaxStartups 50\nMaxSessions 50\n"
            )
            self.sshd.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "/usr/sbin/sshd", "-f", str(config), "-D", "-e"],
                stdout=subprocess.DEVNULL, stderr=open(self.dir / f"sshd{index}.log", "w")))
        deadline = time.monotonic() + 20
        for addr in self.addresses:
            while subprocess.run(self.in_head(self.ssh_argv(addr) + ["true"]), capture_output=True).returncode:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd on {addr} did not come up: {(self.dir / 'sshd0.log').read_text()}")
                time.sleep(0.2)

    def ssh_options(self) -> list[str]:
        """`ddlc launch` options that reach these hosts."""
        return ["--ssh-port", str(SSH_PORT), "--ssh-identity", str(self.key),
                "--ssh-option", "StrictHostKeyChecking=no", "--ssh-option", "UserKnownHostsFile=/dev/null"]

    def ssh_argv(self, addr: str) -> list[str]:
        return ["ssh", "-p", str(SSH_PORT), "-i", str(self.key), "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", addr]

    def in_head(self, argv: list[str]) -> list[str]:
        """Run `argv` on the first host (where the launcher runs, like a cluster's head node)."""
        return ["ip", "netns", "exec", self.namespaces[0], *argv]

    def hostfile(self, slots: int = 1) -> Path:
        path = self.dir / "hostfile"
        path.write_text("".join(f"{addr} slots={slots}\n" for addr in self.addresses))
        return path

    def close(self) -> None:
        for proc in self.sshd:
            proc.terminate()
        for proc in self.sshd:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # also removes the veth pair
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        try:
            NETNS_ETC.rmdir()  # only when no other namespace keeps files there
        except OSError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
