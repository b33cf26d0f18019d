"""EFA and NCCL networking checks: EFA devices and libfabric, the aws-ofi-nccl plugin, NCCL_*/FI_* settings,
locked-memory limit and huge pages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from ddlc.ops.doctor.node import RdmaDevice
from ddlc.ops.doctor.results import (ANCHOR_EFA, ANCHOR_FORK_MEMORY, ANCHOR_MEMLOCK, ANCHOR_NCCL_HANG, CheckResult,
                                     Status)


# -- EFA, NCCL/libfabric settings, memory limits ------------------------------------------------------------

FI_INFO_DIRS = ("/opt/amazon/efa/bin",)
OFI_NCCL_DIRS = ("/opt/amazon/ofi-nccl/lib", "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu",
                 "/opt/amazon/ofi-nccl/lib64", "/opt/aws-ofi-nccl/lib")


def find_fi_info(environ: Mapping[str, str]) -> Optional[str]:
    search = os.pathsep.join([environ.get("PATH", os.defpath), *FI_INFO_DIRS])
    return shutil.which("fi_info", path=search)


def run_fi_info(fi_info: str, timeout_s: float = 10.0) -> tuple[bool, str]:
    """(efa provider listed, first line of output or error) from `fi_info -p efa -t FI_EP_RDM`."""
    try:
        proc = subprocess.run([fi_info, "-p", "efa", "-t", "FI_EP_RDM"], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"fi_info gave no answer within {timeout_s:.0f} s"
    except OSError as error:
        return False, f"cannot run {fi_info}: {error.strerror or error}"
    output = (proc.stdout + proc.stderr).strip()
    found = proc.returncode == 0 and re.search(r"provider:\s*efa\b", proc.stdout) is not None
    first = output.splitlines()[0] if output else f"exit code {proc.returncode}"
    return found, first


def check_efa(devices: Sequence[RdmaDevice], fi_info: Optional[str], expect_efa: bool,
              fi_info_runner: Callable[[str], tuple[bool, str]] = run_fi_info) -> CheckResult:
    name = "efa"
    efa = [d for d in devices if d.is_efa]
    if not efa:
        status = Status.FAIL if expect_efa else Status.WARN
        return CheckResult(name, status, "no EFA device in /sys/class/infiniband: NCCL between nodes uses TCP "
                           "sockets (expected on g5, CPU or single-node runs)",
                           "use an EFA instance type (p4d/p5) with EFA interfaces attached", ANCHOR_EFA)
    names = ", ".join(d.name for d in efa)
    inactive = [d.name for d in efa if not d.active]
    if inactive:
        return CheckResult(name, Status.FAIL, f"{len(efa)} EFA devices ({names}); port not ACTIVE on "
                           f"{', '.join(inactive)}", "stop/start the instance; if it persists, replace it",
                           ANCHOR_EFA)
    if fi_info is None:
        return CheckResult(name, Status.FAIL, f"{len(efa)} EFA devices ({names}) but no fi_info: the EFA "
                           "software (libfabric) is not installed", "install the EFA installer or use the "
                           "Deep Learning AMI", ANCHOR_EFA)
    found, first_line = fi_info_runner(fi_info)
    if not found:
        return CheckResult(name, Status.FAIL, f"{len(efa)} EFA devices ({names}) but libfabric lists no efa "
                           f"provider: {first_line}", "reinstall the EFA software; check `fi_info -p efa`",
                           ANCHOR_EFA)
    return CheckResult(name, Status.PASS, f"{len(efa)} EFA devices ({names}), ports ACTIVE; "
                       "fi_info lists the efa provider")


def find_ofi_nccl_plugin(environ: Mapping[str, str]) -> Optional[Path]:
    """The aws-ofi-nccl plugin (libnccl-net*.so) NCCL loads to use EFA; None when not found."""
    dirs = [d for d in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d] + list(OFI_NCCL_DIRS)
    for directory in dirs:
        for candidate in sorted(Path(directory).glob("libnccl-net*.so*")):
            return candidate
    return None


def check_ofi_nccl(devices: Sequence[RdmaDevice], plugin: Optional[Path]) -> CheckResult:
    name = "ofi-nccl"
    if not any(d.is_efa for d in devices):
        return CheckResult(name, Status.PASS, "not needed (no EFA device)")
    if plugin is None:
        return CheckResult(name, Status.FAIL, "EFA present but no aws-ofi-nccl plugin (libnccl-net*.so) on "
                           "LD_LIBRARY_PATH or under /opt/amazon/ofi-nccl: NCCL will use TCP",
                           "add the plugin's lib directory to LD_LIBRARY_PATH", ANCHOR_EFA)
    return CheckResult(name, Status.PASS, f"aws-ofi-nccl plugin: {plugin}")


def _interface_matches(spec: str, interfaces: Sequence[str]) -> bool:
    """NCCL_SOCKET_IFNAME semantics: comma list of prefixes, `=name` exact, `^...` excludes."""
    if spec.startswith("^"):
        excluded = [p for p in spec[1:].split(",") if p]
        return any(not any(i.startswith(p.lstrip("=")) for p in excluded) for i in interfaces)
    for pattern in filter(None, spec.split(",")):
        if pattern.startswith("="):
            if pattern[1:] in interfaces:
                return True
        elif any(i.startswith(pattern) for i in interfaces):
            return True
    return False


def check_nccl_env(environ: Mapping[str, str], interfaces: Sequence[str], efa_present: bool) -> CheckResult:
    name = "nccl-env"
    settings = {k: v for k, v in sorted(environ.items()) if k.startswith(("NCCL_", "FI_", "TORCH_NCCL_"))}
    shown = " ".join(f"{k}={v}" for k, v in settings.items()) or "no NCCL_*/FI_* variables set"
    fails: list[tuple[str, str, str]] = []
    warns: list[tuple[str, str, str]] = []
    provider = settings.get("FI_PROVIDER")
    if efa_present and provider and provider.lower() != "efa":
        fails.append((f"FI_PROVIDER={provider} keeps libfabric off EFA", "export FI_PROVIDER=efa", ANCHOR_EFA))
    if efa_present and settings.get("NCCL_NET", "").lower() == "socket":
        fails.append(("NCCL_NET=Socket forces TCP although EFA is present", "unset NCCL_NET", ANCHOR_EFA))
    ifname = settings.get("NCCL_SOCKET_IFNAME")
    if ifname and not _interface_matches(ifname, interfaces):
        fails.append((f"NCCL_SOCKET_IFNAME={ifname} matches none of this host's interfaces "
                      f"({', '.join(interfaces)})", "set NCCL_SOCKET_IFNAME to an existing interface, "
                      "e.g. ^lo,docker", ANCHOR_NCCL_HANG))
    for key in ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING"):
        if settings.get(key) == "0":
            warns.append((f"{key}=0: a rank stuck in a collective is never aborted, the job hangs until killed",
                          f"unset {key}", ANCHOR_NCCL_HANG))
    if settings.get("NCCL_DEBUG", "").upper() == "TRACE":
        warns.append(("NCCL_DEBUG=TRACE logs every call and slows training", "use NCCL_DEBUG=INFO or WARN",
                      ANCHOR_NCCL_HANG))
    for key in ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE"):
        if settings.get(key) == "1":
            warns.append((f"{key}=1 slows GPU-to-GPU traffic inside a node", f"unset {key}", ANCHOR_NCCL_HANG))
    if fails or warns:
        status = Status.FAIL if fails else Status.WARN
        problems = fails + warns
        detail = "; ".join(p[0] for p in problems) + f" [{shown}]"
        return CheckResult(name, status, detail, problems[0][1], problems[0][2])
    return CheckResult(name, Status.PASS, shown)


def check_memlock(limit_bytes: Optional[int], efa_present: bool) -> CheckResult:
    name = "memlock"
    if limit_bytes is None:
        return CheckResult(name, Status.PASS, "ulimit -l: unlimited")
    shown = f"ulimit -l: {limit_bytes // 1024} KiB"
    if efa_present:
        return CheckResult(name, Status.FAIL, f"{shown}: EFA cannot register (pin) enough memory",
                           "set `* - memlock unlimited` in /etc/security/limits.conf (LimitMEMLOCK=infinity "
                           "for systemd units) and log in again", ANCHOR_MEMLOCK)
    return CheckResult(name, Status.PASS, f"{shown} (matters only with EFA, none here)")


def check_hugepages(nr_hugepages: Optional[int], transparent: Optional[str], environ: Mapping[str, str],
                    efa_present: bool) -> CheckResult:
    name = "hugepages"
    thp = "unknown"
    if transparent:
        match = re.search(r"\[(\w+)\]", transparent)
        thp = match.group(1) if match else transparent.strip()
    shown = f"vm.nr_hugepages={nr_hugepages if nr_hugepages is not None else 'unknown'}, transparent huge pages: {thp}"
    use_huge = environ.get("FI_EFA_USE_HUGE_PAGE")
    if efa_present and (nr_hugepages or 0) > 0 and use_huge not in ("0", "false", "no", "off"):
        return CheckResult(name, Status.WARN,
                           f"{shown}; EFA buffers use huge pages (FI_EFA_USE_HUGE_PAGE unset): forking data-loader "
                           "workers can fail with `Cannot allocate memory`",
                           "export FI_EFA_USE_HUGE_PAGE=0 in the launch environment", ANCHOR_FORK_MEMORY)
    return CheckResult(name, Status.PASS, shown)


# A one-process NCCL job: init the communicator (NCCL loads its network plugin there) and run one all-reduce.
NCCL_PROBE = """
import os, socket, torch, torch.distributed as dist
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
torch.cuda.set_device(0)
dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
t = torch.ones(1, device="cuda"); dist.all_reduce(t); torch.cuda.synchronize()
dist.destroy_process_group()
print("ddlc-nccl-probe-ok")
"""


def run_nccl_probe(environ: Mapping[str, str], python: str = sys.executable, timeout_s: float = 60.0) -> tuple[int, str]:
    """(exit code, output) of NCCL_PROBE with NCCL_DEBUG=INFO for the INIT and NET subsystems."""
    env = {**environ, "NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET"}
    try:
        proc = subprocess.run([python, "-c", NCCL_PROBE], capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return -1, f"no answer within {timeout_s:g} s"
    return proc.returncode, proc.stdout + proc.stderr


def nccl_network(output: str) -> tuple[Optional[str], str]:
    """From NCCL's INFO log: ("ofi" | "socket" | "ib" | None, the line that says so)."""
    chosen = None
    for line in output.splitlines():
        if re.search(r"NET/OFI", line) and chosen is None:
            chosen = ("ofi", line.strip())
        match = re.search(r"Using network (\S+)", line)
        if match:
            name = match.group(1).lower()
            kind = "ofi" if ("libfabric" in name or "ofi" in name) else "socket" if name == "socket" else "ib" \
                if name == "ib" else name
            return kind, line.strip()
    return chosen if chosen else (None, "")


def check_nccl_net_plugin(efa_present: bool, have_gpus: bool, torch_nccl: bool,
                          probe: Callable[[], tuple[int, str]]) -> CheckResult:
    """Proves NCCL loads the aws-ofi-nccl plugin (finding the file is not enough): a one-process NCCL init with
    NCCL_DEBUG=INFO must log NET/OFI, not `Using network Socket`."""
    name = "nccl-net-plugin"
    if not efa_present:
        return CheckResult(name, Status.SKIP, "no EFA device: NCCL uses sockets between nodes (expected here)")
    if not have_gpus or not torch_nccl:
        return CheckResult(name, Status.SKIP, "no CUDA GPU with NCCL in torch: nothing to initialise")
    code, output = probe()
    kind, line = nccl_network(output)
    if kind == "ofi" and code == 0:
        return CheckResult(name, Status.PASS, f"NCCL loaded the aws-ofi-nccl plugin: {line[-160:]}")
    if code != 0 and kind is None:
        last = (output.strip().splitlines() or [f"exit code {code}"])[-1]
        return CheckResult(name, Status.FAIL, f"a one-process NCCL init failed: {last[-200:]}",
                           "run `NCCL_DEBUG=INFO python -c 'import torch'...` by hand; check the driver and NCCL "
                           "(driver-cuda, nccl checks)", ANCHOR_EFA)
    shown = line[-160:] or "no NET/OFI line in NCCL's log"
    return CheckResult(name, Status.FAIL, f"EFA present but NCCL did not load aws-ofi-nccl ({shown}): traffic "
                       "between nodes would go over TCP sockets",
                       "put the plugin's directory first on LD_LIBRARY_PATH (/opt/amazon/ofi-nccl/lib; `ddlc "
                       "launch` does) or set NCCL_NET_PLUGIN; unset NCCL_NET=Socket", ANCHOR_EFA)
