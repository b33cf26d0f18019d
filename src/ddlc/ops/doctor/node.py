"""Facts about this node that the checks read: cluster settings, torch build, GPUs, driver, RDMA devices, limits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from ddlc.ops.cluster_env import CLUSTER_ENV_FILE, node_environment, read_env_file  # noqa: F401 (re-exported)


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


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text()
    except OSError:
        return None


def memlock_limit() -> Optional[int]:
    """Soft RLIMIT_MEMLOCK in bytes; None means unlimited."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft
