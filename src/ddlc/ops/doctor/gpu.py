"""GPU checks: devices the driver registered vs torch, driver vs CUDA build, NCCL in torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ddlc.ops.doctor.node import GpuInfo, TorchFacts
from ddlc.ops.doctor.results import ANCHOR_DRIVER, ANCHOR_GPUS, CheckResult, Status


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


FABRIC_MANAGER = "nv-fabricmanager"


def nvswitch_present(dev_root: Path, instance_type: Optional[str]) -> bool:
    """NVSwitch fabric here: its device files exist (/dev/nvidia-nvswitch*), or the instance table says so."""
    if any(dev_root.glob("nvidia-nvswitch*")):
        return True
    if instance_type:
        from ddlc.infra.instance_types import GPU_INSTANCE_TYPES

        spec = GPU_INSTANCE_TYPES.get(instance_type)
        return bool(spec and spec.nvswitch)
    return False


def process_running(proc_root: Path, command: str) -> bool:
    """Whether a process whose name (/proc/<pid>/comm) is `command` is running."""
    for comm in proc_root.glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == command[:15]:  # the kernel keeps 15 characters of the name
                return True
        except OSError:
            continue
    return False


def check_fabricmanager(nvswitch: bool, running: bool, instance_type: Optional[str]) -> CheckResult:
    """NVSwitch systems (p4d, p4de, p5, p5e, p5en) need nvidia-fabricmanager, else CUDA fails with error 802
    (system not yet initialized) on the first kernel."""
    name = "fabricmanager"
    where = f" ({instance_type})" if instance_type else ""
    if not nvswitch:
        return CheckResult(name, Status.PASS, f"not needed: no NVSwitch{where}")
    if running:
        return CheckResult(name, Status.PASS, f"NVSwitch present{where}; {FABRIC_MANAGER} is running")
    return CheckResult(name, Status.FAIL, f"NVSwitch present{where} but {FABRIC_MANAGER} is not running: CUDA "
                       "fails with error 802 (system not yet initialized)",
                       "sudo systemctl enable --now nvidia-fabricmanager (its version must match the driver's)",
                       ANCHOR_GPUS)
