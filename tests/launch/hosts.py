"""Three real hosts for multi-node tests: network namespaces on one bridge, each running its own sshd.

    host a (10.213.0.1, runs `ddlc launch`)  host b (10.213.0.2)  host c (10.213.0.3)
              ddlc0 ------------------------------ ddlc0 ------------------ ddlc0
                         veth pairs to a bridge in a fourth "switch" namespace

Addresses 10.213.0.0/24 exist only inside these namespaces, so test traffic cannot leave them. Every host's
interface is named `ddlc0`, so GLOO_SOCKET_IFNAME=ddlc0 is right on each. `link(i, up=False)` cuts a host off the
network as a failed NIC or switch port would. Two-host tests use the first two hosts (`hostfile(count=2)`).

Like a real cluster node, each host's name resolves to its own cluster address: `ip netns exec` bind-mounts
/etc/netns/<namespace>/hosts over /etc/hosts, and ours maps this machine's hostname (which both namespaces share)
to the namespace's address. Without it the hostname resolves to 127.0.0.1, which Horovod 0.28.1 ends up
announcing to its peers (docs/launch.md, known limitations).
Each host also gets its own /etc/ddlc (bind-mounted the same way) so a test can make one host look like a
cluster worker that is missing its GPUs (`set_cluster_env`), which `ddlc health` then fails.
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
ETC_DDLC = Path("/etc/ddlc")  # must exist for `ip netns exec` to bind a namespace's own copy over it


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


class Hosts:
    def __init__(self, count: int = 3):
        tag = f"{os.getpid() % 100000}"
        self.namespaces = [f"ddlc{tag}{chr(ord('a') + i)}" for i in range(count)]
        self.switch = f"ddlc{tag}s"
        self.addresses = [f"10.213.0.{i + 1}" for i in range(count)]
        self.nic = NIC
        self.dir = Path(tempfile.mkdtemp(prefix="ddlc-hosts-"))
        self.key = self.dir / "id_ed25519"
        self.sshd: list[subprocess.Popen] = []
        self._made_etc_ddlc = False
        try:
            self._network()
            self._sshd()
        except BaseException:
            self.close()
            raise

    def _network(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        if not ETC_DDLC.exists():
            ETC_DDLC.mkdir()
            self._made_etc_ddlc = True
        for index, (ns, addr) in enumerate(zip(self.namespaces, self.addresses)):
            _ip("netns", "add", ns)
            host_end, switch_end = f"v{ns}"[:15], f"p{ns}"[:15]
            _ip("link", "add", host_end, "type", "veth", "peer", "name", switch_end)
            _ip("link", "set", switch_end, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", switch_end, "master", "br0")
            _ip("-n", self.switch, "link", "set", switch_end, "up")
            _ip("link", "set", host_end, "netns", ns)
            _ip("-n", ns, "link", "set", host_end, "name", NIC)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", NIC)
            _ip("-n", ns, "link", "set", NIC, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self.resolve_hostname_to(ns, addr)
            self.set_cluster_env(index, "")

    def set_cluster_env(self, index: int, text: str) -> None:
        """Write host `index`'s /etc/ddlc/cluster.env (what a cluster node's boot script writes)."""
        etc = NETNS_ETC / self.namespaces[index] / "ddlc"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "cluster.env").write_text(text)

    def link(self, index: int, up: bool) -> None:
        """Take host `index`'s network link down (as a failed NIC would) or bring it back."""
        _ip("-n", self.namespaces[index], "link", "set", NIC, "up" if up else "down")

    def resolve_hostname_to(self, namespace: str, address: str) -> None:
        """Make this machine's hostname resolve to `address` on that host (rewritten in place: running sshds
        keep /etc/netns/<namespace>/hosts bind-mounted, so new sessions see the change)."""
        etc = NETNS_ETC / namespace
        etc.mkdir(parents=True, exist_ok=True)
        peers = "".join(f"10.213.0.{i} ddlc-host-{i}\n" for i in range(1, 4))  # reverse lookups, as DNS answers them
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost ip6-localhost\n{address} {socket.gethostname()}\n"
                                   + peers)

    def _sshd(self) -> None:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / "host_key")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        shutil.copy(self.key.with_suffix(".pub"), self.dir / "authorized_keys")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        for index in range(len(self.namespaces)):
            self.sshd.append(self._start_sshd(index))
        self._wait_for_sshd(self.addresses)

    def _start_sshd(self, index: int) -> subprocess.Popen:
        ns, addr = self.namespaces[index], self.addresses[index]
        config = self.dir / f"sshd{index}.conf"
        config.write_text(
            f"Port {SSH_PORT}\nListenAddress {addr}\nHostKey {self.dir / 'host_key'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
            f"PidFile {self.dir / f'sshd{index}.pid'}\nMaxStartups 50\nMaxSessions 50\n"
        )
        return subprocess.Popen(["ip", "netns", "exec", ns, "/usr/sbin/sshd", "-f", str(config), "-D", "-e"],
                                stdout=subprocess.DEVNULL, stderr=open(self.dir / f"sshd{index}.log", "a"))

    def processes(self, index: int) -> list[int]:
        """Every process running on host `index` (in its network namespace): sshd, sessions, the job."""
        target = os.stat(f"/run/netns/{self.namespaces[index]}").st_ino
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.stat(entry / "ns/net").st_ino == target:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def crash(self, index: int) -> list[int]:
        """The host dies: kill -9 every process on it, then its link goes down. Returns the pids killed."""
        pids = self.processes(index)
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self.link(index, up=False)
        self.sshd[index].wait(timeout=10)
        return pids

    def revive(self, index: int) -> None:
        """The host comes back (rebooted): link up, sshd running again."""
        self.link(index, up=True)
        self.sshd[index] = self._start_sshd(index)
        self._wait_for_sshd([self.addresses[index]])

    def _wait_for_sshd(self, addresses: list[str]) -> None:
        deadline = time.monotonic() + 20
        for addr in addresses:
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

    def hostfile(self, slots: int = 1, count: int = 2, name: str = "hostfile") -> Path:
        """The first `count` hosts (two-host tests use a and b)."""
        path = self.dir / name
        path.write_text("".join(f"{addr} slots={slots}\n" for addr in self.addresses[:count]))
        return path

    def close(self) -> None:
        for proc in self.sshd:
            proc.terminate()
        for proc in self.sshd:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in [*self.namespaces, self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # also removes the veth pairs
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        if self._made_etc_ddlc:
            try:
                ETC_DDLC.rmdir()
            except OSError:
                pass
        try:
            NETNS_ETC.rmdir()  # only when no other namespace keeps files there
        except OSError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
