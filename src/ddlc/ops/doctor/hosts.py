"""Checks that involve other hosts: the rendezvous port, and clocks and versions across a hostfile (over ssh)."""

from __future__ import annotations

import errno
import json
import platform
import shlex
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence

from ddlc.ops.doctor.results import ANCHOR_HOSTS, ANCHOR_PORT, CheckResult, Status
from ddlc.ops.doctor.storage import _one_line


# -- ports --------------------------------------------------------------------------------------------------

def _port_owner(port: int) -> str:
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid:
                    try:
                        process = psutil.Process(conn.pid)
                        return f" by pid {conn.pid} ({process.name()})"
                    except psutil.Error:
                        return f" by pid {conn.pid}"
    except Exception:  # AccessDenied on some systems: the port number is enough to go on
        pass
    return ""


def check_master_port(port: int, host: str = "0.0.0.0") -> CheckResult:
    name = "master-port"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like torch's TCPStore: reuse a port in TIME_WAIT, fail only on a live listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return CheckResult(name, Status.FAIL, f"port {port} is in use{_port_owner(port)}: rank 0 cannot "
                                   "start the rendezvous store", "stop the old job (`ps -ef | grep torchrun`) or "
                                   "pick another --master_port", ANCHOR_PORT)
            return CheckResult(name, Status.FAIL, f"cannot bind port {port}: {error.strerror or error}",
                               "pick a port between 1024 and 65535", ANCHOR_PORT)
    return CheckResult(name, Status.PASS, f"port {port} is free (matters on the master node, node_rank 0)")


# -- other hosts --------------------------------------------------------------------------------------------

class HostRunner(Protocol):
    def run(self, host: str, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess: ...


class SshRunner:
    """Runs a command on a host over ssh (no prompts, short connect timeout); local names run locally."""

    def __init__(self, port: Optional[int] = None, connect_timeout_s: int = 5,
                 local_hosts: Optional[set[str]] = None, ssh: str = "ssh") -> None:
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.local_hosts = local_hosts if local_hosts is not None else {
            "localhost", "127.0.0.1", "::1", socket.gethostname()}
        self.ssh = ssh

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        if host in self.local_hosts:
            return list(argv)
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}"]
        if self.port is not None:
            options += ["-p", str(self.port)]
        return [self.ssh, *options, host, shlex.join(argv)]

    def run(self, host: str, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(host, argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


# Versions from package metadata: importing torch on every host would take seconds each.
FACTS_SNIPPET = (
    "import json, platform\n"
    "facts = {'python': platform.python_version(), 'torch': None, 'ddlc': None}\n"
    "try:\n from importlib.metadata import version; facts['torch'] = version('torch')\nexcept Exception: pass\n"
    "try:\n import ddlc; facts['ddlc'] = ddlc.__version__\nexcept Exception: pass\n"
    "print(json.dumps(facts))\n"
)
CLOCK_SNIPPET = "import time; print(repr(time.time()))"


@dataclass
class HostFacts:
    host: str
    error: Optional[str] = None
    versions: dict = field(default_factory=dict)
    offset_s: Optional[float] = None  # remote clock minus local clock
    uncertainty_s: Optional[float] = None

    @property
    def reachable(self) -> bool:
        return self.error is None


def local_versions() -> dict:
    """This interpreter's versions, read the way FACTS_SNIPPET reads them on the other hosts."""
    from importlib.metadata import PackageNotFoundError, version

    from ddlc import __version__

    try:
        torch_version: Optional[str] = version("torch")
    except PackageNotFoundError:
        torch_version = None
    return {"python": platform.python_version(), "torch": torch_version, "ddlc": __version__}


def _failure(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stderr or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"


def gather_host(runner: HostRunner, host: str, python: str, timeout_s: float = 30.0,
                clock_samples: int = 3) -> HostFacts:
    """Versions and clock offset of one host; any failure is recorded, never raised."""
    facts = HostFacts(host)
    try:
        proc = runner.run(host, [python, "-c", FACTS_SNIPPET], timeout_s)
        if proc.returncode != 0:
            facts.error = _failure(proc)
            return facts
        facts.versions = json.loads(proc.stdout.strip().splitlines()[-1])
        best: Optional[tuple[float, float]] = None
        for _ in range(clock_samples):
            sent = time.time()
            proc = runner.run(host, [python, "-c", CLOCK_SNIPPET], timeout_s)
            received = time.time()
            if proc.returncode != 0:
                facts.error = _failure(proc)
                return facts
            remote = float(proc.stdout.strip().splitlines()[-1])
            half_round_trip = (received - sent) / 2
            if best is None or half_round_trip < best[1]:
                best = (remote - (sent + half_round_trip), half_round_trip)
        assert best is not None
        facts.offset_s, facts.uncertainty_s = best
    except subprocess.TimeoutExpired:
        facts.error = f"no answer within {timeout_s:g} s"
    except FileNotFoundError as error:
        facts.error = f"cannot run {error.filename}: not installed"
    except (ValueError, IndexError, OSError) as error:
        facts.error = f"unexpected answer: {_one_line(error)}"
    return facts


def gather_hosts(runner: HostRunner, hosts: Sequence[str], python: str, timeout_s: float = 30.0) -> list[HostFacts]:
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        return list(pool.map(lambda h: gather_host(runner, h, python, timeout_s), hosts))


def _hosts(count: int) -> str:
    return f"{count} host" if count == 1 else f"{count} hosts"


def check_clock_skew(hosts: Optional[Sequence[HostFacts]], warn_s: float = 1.0, fail_s: float = 60.0,
                     unreachable_status: Status = Status.FAIL) -> CheckResult:
    """`unreachable_status`: FAIL for a hostfile the user passed, WARN for one found on the node by default."""
    name = "clock-skew"
    if hosts is None:
        return CheckResult(name, Status.SKIP, "no hostfile given (--hostfile, or /etc/ddlc/hostfile on a cluster node)")
    unreachable = [h for h in hosts if not h.reachable]
    if unreachable:
        listed = "; ".join(f"{h.host}: {h.error}" for h in unreachable)
        return CheckResult(name, unreachable_status, f"host unreachable: {listed}",
                           "make sure every host is up and accepts ssh without a prompt (BatchMode)", ANCHOR_HOSTS)
    # Only count what the round trip cannot explain.
    skews = {h.host: max(0.0, abs(h.offset_s or 0.0) - (h.uncertainty_s or 0.0)) for h in hosts}
    worst_host = max(skews, key=skews.get)
    detail = ", ".join(f"{h.host} {h.offset_s:+.3f} s (±{h.uncertainty_s:.3f})" for h in hosts)
    if skews[worst_host] >= fail_s:
        return CheckResult(name, Status.FAIL, f"clock skew of at least {skews[worst_host]:.1f} s on {worst_host}: "
                           f"{detail}", "restart chrony on that host (`sudo systemctl restart chrony`)", ANCHOR_HOSTS)
    if skews[worst_host] >= warn_s:
        return CheckResult(name, Status.WARN, f"clock skew of at least {skews[worst_host]:.1f} s on {worst_host}: "
                           f"{detail}", "restart chrony on that host (`sudo systemctl restart chrony`)", ANCHOR_HOSTS)
    return CheckResult(name, Status.PASS, f"{_hosts(len(hosts))} within {warn_s:g} s: {detail}")


def check_versions(local: dict, hosts: Optional[Sequence[HostFacts]]) -> CheckResult:
    name = "versions"
    shown = ", ".join(f"{k} {v}" for k, v in local.items())
    if hosts is None:
        return CheckResult(name, Status.PASS, f"this host: {shown} (no hostfile: not compared)")
    reachable = [h for h in hosts if h.reachable]
    different = []
    for host in reachable:
        diffs = [f"{key} {host.versions.get(key)}" for key in local if host.versions.get(key) != local[key]]
        if diffs:
            different.append(f"{host.host}: {', '.join(diffs)}")
    skipped = [h.host for h in hosts if not h.reachable]
    suffix = f" (not compared, unreachable: {', '.join(skipped)})" if skipped else ""
    if different:
        return CheckResult(name, Status.FAIL, f"this host has {shown}; differs on {'; '.join(different)}{suffix}",
                           "install the same python/torch/ddlc on every node (same AMI and ddlc_package)",
                           ANCHOR_HOSTS)
    if skipped:
        return CheckResult(name, Status.WARN, f"{shown} on {_hosts(len(reachable))} reachable{suffix}",
                           "fix reachability (see clock-skew) and run again", ANCHOR_HOSTS)
    return CheckResult(name, Status.PASS, f"{shown} on all {_hosts(len(hosts))}")
