"""`ddlc doctor`: preflight checks for a node before a training job.

Each check is a small function that returns a `CheckResult`; its inputs (environment mapping, /proc and /sys
roots, limits, hostfile, checkpoint URI, how other hosts are reached) are arguments, so every check can be run
against a prepared tree in tests and against the real machine in production. `run_checks` wires them together.

Statuses: PASS, WARN (works, but slower or fragile), FAIL (the job will fail or hang: exit code 1), SKIP (the
input the check needs was not given, e.g. no hostfile). Every non-PASS result carries a one-line fix and an
anchor into docs/troubleshooting.md. No check waits without a timeout.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

from ddlc.ops.cluster_env import CLUSTER_ENV_FILE, node_environment, read_env_file  # noqa: F401 (re-exported)

TROUBLESHOOTING = "docs/troubleshooting.md"
DEFAULT_MASTER_PORT = 29500
DEFAULT_MIN_FREE_GB = 50.0
NETWORK_TIMEOUT_S = 20.0

# Troubleshooting anchors (GitHub heading slugs of docs/troubleshooting.md; a test keeps them in sync).
ANCHOR_GPUS = "gpus-missing-or-not-visible-to-pytorch"
ANCHOR_DRIVER = "driver-and-cuda-version-mismatch"
ANCHOR_EFA = "efa-not-used-falls-back-to-tcp"
ANCHOR_NCCL_HANG = "nccl-timeouts-and-hangs"
ANCHOR_MEMLOCK = "locked-memory-limit-too-low"
ANCHOR_FORK_MEMORY = "cannot-allocate-memory-in-data-loader-workers-with-efa"
ANCHOR_STORAGE = "checkpoint-storage-not-writable-or-disk-full"
ANCHOR_PORT = "master-port-already-in-use"
ANCHOR_HOSTS = "clock-skew-and-version-drift-between-nodes"
from ddlc.ops.boot_status import ANCHOR_BOOT, BOOT_STATUS_FILE, check_boot, read_boot_status  # noqa: E402


class Status(str, Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


_SEVERITY = {Status.PASS: 0, Status.SKIP: 0, Status.WARN: 1, Status.FAIL: 2}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    fix: str = ""
    doc_anchor: str = ""

    @property
    def doc(self) -> str:
        return f"{TROUBLESHOOTING}#{self.doc_anchor}" if self.doc_anchor else ""

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status.value, "detail": self.detail, "fix": self.fix,
                "doc": self.doc}


def worst(results: Sequence[CheckResult]) -> Status:
    return max((r.status for r in results), key=_SEVERITY.__getitem__, default=Status.PASS)


def report(results: Sequence[CheckResult]) -> dict:
    """The `--json` document: overall ok flag, counts per status, and every check."""
    counts = {status.value: sum(r.status is status for r in results) for status in Status}
    return {"ok": worst(results) is not Status.FAIL, "counts": counts, "checks": [r.to_dict() for r in results]}


# -- node facts ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TorchFacts:
    version: str
    cuda: Optional[str]  # torch.version.cuda: None for a CPU-only build
    cuda_available: bool
    device_count: int
    nccl_available: bool
    nccl_version: Optional[str]

    @classmethod
    def from_torch(cls) -> "TorchFacts":
        import torch
        import torch.distributed as dist

        cuda_available = False
        count = 0
        try:
            cuda_available = torch.cuda.is_available()
            count = torch.cuda.device_count() if cuda_available else 0
        except Exception:  # a broken driver raises here; the GPU check reports it
            pass
        nccl = dist.is_available() and dist.is_nccl_available()
        nccl_version = None
        if nccl:
            try:
                version = torch.cuda.nccl.version()
                nccl_version = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
            except Exception:
                nccl_version = None
        return cls(torch.__version__, torch.version.cuda, cuda_available, count, nccl, nccl_version)


@dataclass(frozen=True)
class GpuInfo:
    bus: str
    model: str


def read_nvidia_gpus(proc_root: Path) -> list[GpuInfo]:
    """GPUs the NVIDIA kernel driver registered: /proc/driver/nvidia/gpus/<bus>/information."""
    gpus = []
    for info in sorted((proc_root / "driver/nvidia/gpus").glob("*/information")):
        try:
            text = info.read_text()
        except OSError:
            continue
        match = re.search(r"^Model:\s*(.+)$", text, re.MULTILINE)
        gpus.append(GpuInfo(info.parent.name, match.group(1).strip() if match else "unknown model"))
    return gpus


def read_driver_version(proc_root: Path) -> Optional[str]:
    """The loaded NVIDIA kernel module's version from /proc/driver/nvidia/version (None: no driver)."""
    try:
        text = (proc_root / "driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


@dataclass(frozen=True)
class RdmaDevice:
    name: str
    driver: str
    port_states: dict[str, str] = field(default_factory=dict)

    @property
    def is_efa(self) -> bool:
        return self.driver == "efa" or self.name.startswith("efa")

    @property
    def active(self) -> bool:
        return any("ACTIVE" in state for state in self.port_states.values())


def read_rdma_devices(sys_root: Path) -> list[RdmaDevice]:
    """RDMA devices under /sys/class/infiniband, with their kernel driver and port states."""
    root = sys_root / "class/infiniband"
    if not root.is_dir():
        return []
    devices = []
    for entry in sorted(root.iterdir()):
        try:
            driver = (entry / "device/driver").resolve(strict=True).name
        except OSError:
            driver = ""
        states = {}
        for state_file in sorted(entry.glob("ports/*/state")):
            try:
                states[state_file.parent.name] = state_file.read_text().strip()
            except OSError:
                continue
        devices.append(RdmaDevice(entry.name, driver, states))
    return devices


def _read_int(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _gpu_expectation(env: Mapping[str, str], expect_gpus: Optional[int]) -> Optional[int]:
    """GPUs this node must have: --expect-gpus, else DDLC_GPUS_PER_NODE on a cluster worker."""
    if expect_gpus is not None:
        return expect_gpus
    if env.get("DDLC_ROLE") == "worker" and env.get("DDLC_GPUS_PER_NODE", "").isdigit():
        return int(env["DDLC_GPUS_PER_NODE"])
    return None


# -- GPU, driver, NCCL --------------------------------------------------------------------------------------

def check_gpus(gpus: Sequence[GpuInfo], torch: TorchFacts, expected: Optional[int],
               environ: Mapping[str, str]) -> CheckResult:
    name = "gpus"
    if not gpus:
        if expected:
            return CheckResult(name, Status.FAIL, f"no NVIDIA GPU registered by the driver, {expected} expected",
                               "load the NVIDIA driver (reboot; `sudo dmesg | grep -i nvrm`), or replace the node",
                               ANCHOR_GPUS)
        return CheckResult(name, Status.WARN,
                           "no NVIDIA GPU: /proc/driver/nvidia has none (no driver loaded); fine on a head node "
                           "or a CPU machine, training runs on CPU",
                           "on a GPU node pass --expect-gpus N to make this a failure", ANCHOR_GPUS)
    models = sorted({g.model for g in gpus})
    summary = f"{len(gpus)} x {', '.join(models)}"
    if expected is not None and len(gpus) != expected:
        return CheckResult(name, Status.FAIL, f"{summary}: {expected} expected (a GPU fell off the bus?)",
                           "check `sudo dmesg | grep -i xid` for Xid 79, then stop/start or replace the node",
                           ANCHOR_GPUS)
    if torch.cuda is None:
        return CheckResult(name, Status.FAIL, f"{summary}, but torch {torch.version} is a CPU-only build",
                           "install a CUDA build of torch (the Deep Learning AMI's env has one)", ANCHOR_GPUS)
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if torch.device_count != len(gpus):
        if visible is not None and torch.device_count > 0:
            return CheckResult(name, Status.WARN,
                               f"{summary}; torch sees {torch.device_count} (CUDA_VISIBLE_DEVICES={visible})",
                               "unset CUDA_VISIBLE_DEVICES unless you mean to leave GPUs idle", ANCHOR_GPUS)
        return CheckResult(name, Status.FAIL, f"{summary}, but torch sees {torch.device_count}",
                           "check the driver/CUDA pairing (driver-cuda check) and `nvidia-smi`", ANCHOR_GPUS)
    return CheckResult(name, Status.PASS, f"{summary}; torch sees all {torch.device_count}")


# Minimum Linux driver for a CUDA major version (minor-version compatibility, limited features below the
# toolkit's own driver), and the driver each toolkit release shipped with (full feature set).
CUDA_MAJOR_MIN_DRIVER = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 0, 0)}
CUDA_TOOLKIT_DRIVER = {
    (11, 8): (520, 61, 5), (12, 0): (525, 60, 13), (12, 1): (530, 30, 2), (12, 2): (535, 54, 3),
    (12, 3): (545, 23, 6), (12, 4): (550, 54, 14), (12, 5): (555, 42, 2), (12, 6): (560, 28, 3),
    (12, 8): (570, 26, 0), (12, 9): (575, 51, 3), (13, 0): (580, 65, 6),
}


def _version_tuple(text: str) -> tuple[int, int, int]:
    """'570.26' -> (570, 26, 0): padded, so versions of different lengths compare correctly."""
    parts = [int(part) for part in re.findall(r"\d+", text)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def check_driver_cuda(driver: Optional[str], torch: TorchFacts, gpus_expected: bool) -> CheckResult:
    name = "driver-cuda"
    build = f"torch {torch.version} (CUDA {torch.cuda})" if torch.cuda else f"torch {torch.version} (CPU-only build)"
    if driver is None:
        if gpus_expected:
            return CheckResult(name, Status.FAIL, f"no NVIDIA driver loaded; {build}",
                               "load the driver (reboot) or replace the node", ANCHOR_DRIVER)
        return CheckResult(name, Status.WARN, f"no NVIDIA driver loaded (/proc/driver/nvidia/version absent); {build}",
                           "nothing to do on a CPU machine; on a GPU node see the guide", ANCHOR_DRIVER)
    if torch.cuda is None:
        return CheckResult(name, Status.FAIL, f"driver {driver}, but {build}",
                           "install a CUDA build of torch matching the driver", ANCHOR_DRIVER)
    have = _version_tuple(driver)
    cuda = _version_tuple(torch.cuda)
    minimum = CUDA_MAJOR_MIN_DRIVER.get(cuda[0])
    if minimum is None:
        return CheckResult(name, Status.WARN, f"driver {driver}; {build}: CUDA {cuda[0]}.x is not in ddlc's table",
                           "check NVIDIA's CUDA compatibility table by hand", ANCHOR_DRIVER)
    if have < minimum:
        return CheckResult(name, Status.FAIL,
                           f"driver {driver} is older than {'.'.join(map(str, minimum))}, the minimum for CUDA "
                           f"{cuda[0]}.x; {build} cannot initialise CUDA",
                           "roll the nodes to a newer Deep Learning AMI, or install a torch built for an older CUDA",
                           ANCHOR_DRIVER)
    shipped = CUDA_TOOLKIT_DRIVER.get(cuda[:2])
    if shipped is not None and have < shipped:
        return CheckResult(name, Status.WARN,
                           f"driver {driver} runs CUDA {torch.cuda} through minor-version compatibility "
                           f"(CUDA {torch.cuda} shipped with {'.'.join(map(str, shipped))}): PTX JIT and newer "
                           "features are unavailable",
                           "prefer a driver at least as new as the toolkit's (AMI rollover)", ANCHOR_DRIVER)
    return CheckResult(name, Status.PASS, f"driver {driver}; {build}")


def check_nccl(torch: TorchFacts, have_gpus: bool) -> CheckResult:
    name = "nccl"
    if torch.nccl_available:
        version = f" {torch.nccl_version}" if torch.nccl_version else ""
        return CheckResult(name, Status.PASS, f"NCCL{version} available in torch {torch.version}")
    if have_gpus:
        return CheckResult(name, Status.FAIL, f"torch {torch.version} has no NCCL: GPUs cannot all-reduce",
                           "install a CUDA build of torch (it bundles NCCL)", ANCHOR_GPUS)
    return CheckResult(name, Status.WARN, f"torch {torch.version} has no NCCL (CPU-only build): "
                       "distributed runs use gloo, fine on CPU", "on a GPU node install a CUDA build of torch",
                       ANCHOR_GPUS)


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


def memlock_limit() -> Optional[int]:
    """Soft RLIMIT_MEMLOCK in bytes; None means unlimited."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


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


# -- storage ------------------------------------------------------------------------------------------------

def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def local_checkpoint_path(uri: Optional[str]) -> Optional[Path]:
    if not uri:
        return None
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" in uri:
        return None
    return Path(uri)


def check_disk(path: Path, min_free_gb: float) -> CheckResult:
    name = "disk"
    where = _existing_ancestor(path)
    try:
        usage = shutil.disk_usage(where)
    except OSError as error:
        return CheckResult(name, Status.FAIL, f"cannot read free space of {where}: {error.strerror or error}",
                           "check the mount", ANCHOR_STORAGE)
    free_gb = usage.free / 1e9
    detail = f"{free_gb:,.1f} GB free on {where} (need >= {min_free_gb:g} GB)"
    if free_gb < min_free_gb:
        return CheckResult(name, Status.FAIL, detail, "free space: `ddlc checkpoints prune URI --keep-last N`, "
                           "or checkpoint to s3://", ANCHOR_STORAGE)
    return CheckResult(name, Status.PASS, detail)


def _run_with_deadline(work: Callable[[], Any], timeout_s: float) -> Any:
    """Run `work` in a daemon thread; TimeoutError if it takes longer (the thread is abandoned, not joined)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=target, name="ddlc-doctor-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def probe_checkpoint_store(uri: str, endpoint_url: Optional[str] = None) -> float:
    """Write a probe object atomically, read it back, delete it; returns the seconds it took."""
    from ddlc.checkpoint.storage import CheckpointStore

    started = time.perf_counter()
    store = CheckpointStore(uri, endpoint_url)
    if store.scheme == "s3":
        import fsspec

        # A preflight must answer quickly: short timeouts and one retry instead of botocore's patient defaults.
        store.fs = fsspec.filesystem(
            "s3", skip_instance_cache=True,
            config_kwargs={"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 2, "mode": "standard"}},
            **store.storage_options,
        )
    local_root = Path(store.root) if store.scheme == "file" else None
    first_existing = _existing_ancestor(local_root) if local_root else None
    name = f".ddlc-doctor-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    payload = f"ddlc doctor probe {time.time()}\n".encode()
    store.write_bytes_atomic(name, payload)
    try:
        with store.open(name, "rb") as handle:
            if handle.read() != payload:
                raise OSError(f"read back different bytes from {store.display(name)}")
    finally:
        store.fs.rm(store.path(name))
        if local_root is not None and first_existing is not None:
            _remove_created_dirs(local_root, first_existing)
    return time.perf_counter() - started


def _remove_created_dirs(path: Path, keep: Path) -> None:
    """Remove the empty directories the probe created below `keep` (leave the tree as it was)."""
    path = path.absolute()
    while path != keep and keep in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def check_checkpoint_write(uri: Optional[str], endpoint_url: Optional[str] = None,
                           timeout_s: float = NETWORK_TIMEOUT_S) -> CheckResult:
    name = "checkpoint-write"
    if not uri:
        return CheckResult(name, Status.SKIP, "no checkpoint URI given (--checkpoint-uri, or DDLC_CHECKPOINT_BUCKET "
                           "on a cluster node)")
    where = f" via {endpoint_url}" if endpoint_url else ""
    try:
        seconds = _run_with_deadline(lambda: probe_checkpoint_store(uri, endpoint_url), timeout_s)
    except TimeoutError as error:
        return CheckResult(name, Status.FAIL, f"{uri}{where}: {error}", "check the network path to the storage "
                           "(VPC endpoint, security group, proxy)", ANCHOR_STORAGE)
    except PermissionError as error:
        return CheckResult(name, Status.FAIL, f"{uri}{where}: access denied ({_one_line(error)})",
                           "grant the node role (or your credentials) write access to the URI", ANCHOR_STORAGE)
    except FileNotFoundError as error:
        return CheckResult(name, Status.FAIL, f"{uri}{where}: not found ({_one_line(error)})",
                           "check the bucket name (`ddlc cluster status` shows CheckpointBucketName)",
                           ANCHOR_STORAGE)
    except Exception as error:  # noqa: BLE001 - every failure becomes one line
        return CheckResult(name, Status.FAIL, f"{uri}{where}: {type(error).__name__}: {_one_line(error)}",
                           "fix access to the checkpoint URI before training", ANCHOR_STORAGE)
    return CheckResult(name, Status.PASS, f"wrote, read back and deleted a probe object in {uri}{where} "
                       f"({seconds:.2f} s)")


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


# -- all together -------------------------------------------------------------------------------------------

@dataclass
class DoctorOptions:
    """Everything `ddlc doctor` reads, with production defaults; tests point these at prepared trees."""

    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    cluster_env_file: Path = CLUSTER_ENV_FILE
    boot_status_file: Path = BOOT_STATUS_FILE
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    torch: Optional[TorchFacts] = None  # None: ask the installed torch
    memlock_bytes: Optional[int] = -1  # -1: read this process's limit; None: unlimited
    interfaces: Optional[Sequence[str]] = None  # None: psutil
    checkpoint_uri: Optional[str] = None
    endpoint_url: Optional[str] = None
    run_dir: Path = Path("runs")
    min_free_gb: float = DEFAULT_MIN_FREE_GB
    hostfile: Optional[Path] = None
    master_port: Optional[int] = None
    expect_gpus: Optional[int] = None
    expect_efa: bool = False
    runner: Optional[HostRunner] = None
    remote_python: str = sys.executable
    network_timeout_s: float = NETWORK_TIMEOUT_S
    fi_info_runner: Callable[[str], tuple[bool, str]] = run_fi_info


def resolve_inputs(options: DoctorOptions) -> tuple[dict[str, str], Optional[str], Optional[Path], int]:
    """(environment, checkpoint URI, hostfile, master port) after cluster defaults are applied."""
    env = node_environment(options.environ, options.cluster_env_file)
    uri = options.checkpoint_uri
    if uri is None and env.get("DDLC_CHECKPOINT_BUCKET"):
        uri = f"s3://{env['DDLC_CHECKPOINT_BUCKET']}/checkpoints"
    hostfile = options.hostfile
    if hostfile is None and env.get("DDLC_HOSTFILE") and Path(env["DDLC_HOSTFILE"]).is_file():
        hostfile = Path(env["DDLC_HOSTFILE"])
    port = options.master_port
    if port is None:
        port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT", "").isdigit() else DEFAULT_MASTER_PORT
    return env, uri, hostfile, port


def run_checks(options: DoctorOptions) -> list[CheckResult]:
    env, uri, hostfile, port = resolve_inputs(options)
    torch = options.torch or TorchFacts.from_torch()
    gpus = read_nvidia_gpus(options.proc_root)
    expected = _gpu_expectation(env, options.expect_gpus)
    devices = read_rdma_devices(options.sys_root)
    efa_present = any(d.is_efa for d in devices)
    if options.interfaces is not None:
        interfaces = list(options.interfaces)
    else:
        import psutil

        interfaces = sorted(psutil.net_if_addrs())
    limit = memlock_limit() if options.memlock_bytes == -1 else options.memlock_bytes

    boot_status = read_boot_status(options.boot_status_file)  # only cluster nodes have one
    results = [check_boot(boot_status)] if boot_status is not None else []
    results += [
        check_gpus(gpus, torch, expected, env),
        check_driver_cuda(read_driver_version(options.proc_root), torch, bool(expected) or bool(gpus)),
        check_nccl(torch, bool(gpus)),
        check_efa(devices, find_fi_info(env), options.expect_efa, options.fi_info_runner),
        check_ofi_nccl(devices, find_ofi_nccl_plugin(env)),
        check_nccl_env(env, interfaces, efa_present),
        check_memlock(limit, efa_present),
        check_hugepages(_read_int(options.proc_root / "sys/vm/nr_hugepages"),
                        _read_text(options.sys_root / "kernel/mm/transparent_hugepage/enabled"), env, efa_present),
        check_disk(local_checkpoint_path(uri) or options.run_dir, options.min_free_gb),
        check_checkpoint_write(uri, options.endpoint_url, options.network_timeout_s),
        check_master_port(port),
    ]
    host_facts = None
    if hostfile is not None:
        from ddlc.monitor.prometheus_config import parse_hostfile  # the same hostfile format deepspeed reads

        hosts = [entry.host for entry in parse_hostfile(hostfile)]
        runner = options.runner or SshRunner()
        host_facts = gather_hosts(runner, hosts, options.remote_python, timeout_s=max(options.network_timeout_s, 30))
    # A hostfile found on the node (not asked for) must not fail every run on a cluster without ssh keys.
    unreachable = Status.FAIL if options.hostfile is not None else Status.WARN
    results.append(check_clock_skew(host_facts, unreachable_status=unreachable))
    results.append(check_versions(local_versions(), host_facts))
    return results


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text()
    except OSError:
        return None


__all__ = [
    "CheckResult", "DoctorOptions", "HostFacts", "SshRunner", "Status", "TorchFacts", "report", "run_checks",
    "worst",
]
