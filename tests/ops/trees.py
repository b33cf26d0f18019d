"""Prepared /proc and /sys trees shaped like a GPU/EFA node, for the doctor's checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

A100 = "NVIDIA A100-SXM4-40GB"
DRIVER_LINE = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  Sat Aug 19 01:15:15 UTC 2023\n"
OPEN_DRIVER_LINE = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  Release Build  Thu Feb 1 2024\n"


def nvidia_proc(root: Path, gpus: int = 8, model: str = A100, driver: str | None = "550.54.15",
                open_module: bool = False) -> Path:
    """<root>/driver/nvidia/{version,gpus/<bus>/information} as the NVIDIA kernel module writes them."""
    base = root / "driver/nvidia"
    for index in range(gpus):
        bus = f"0000:{0x10 + index:02x}:1c.0"
        info = base / "gpus" / bus / "information"
        info.parent.mkdir(parents=True, exist_ok=True)
        info.write_text(f"Model: \t\t {model}\nIRQ:   \t\t 0\nGPU UUID: \t GPU-{index:08d}\nBus Location: \t {bus}\n"
                        f"Device Minor: \t {index}\nGPU Excluded:\t No\n")
    if driver is not None:
        base.mkdir(parents=True, exist_ok=True)
        line = OPEN_DRIVER_LINE if open_module else DRIVER_LINE
        (base / "version").write_text(line.format(version=driver) + "GCC version:  gcc version 11.4.0\n")
    return root


def hugepages_proc(root: Path, nr_hugepages: int) -> Path:
    path = root / "sys/vm/nr_hugepages"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{nr_hugepages}\n")
    return root


def rdma_sys(root: Path, devices: int = 4, driver: str = "efa", state: str = "4: ACTIVE") -> Path:
    """<root>/class/infiniband/<dev>/{device/driver -> drivers/<driver>, ports/1/state} like sysfs."""
    drivers = root / "bus/pci/drivers" / driver
    drivers.mkdir(parents=True, exist_ok=True)
    for index in range(devices):
        dev = root / "class/infiniband" / f"rdmap{16 * (index + 1)}s27"
        (dev / "device").mkdir(parents=True, exist_ok=True)
        (dev / "device/driver").symlink_to(drivers)
        (dev / "ports/1").mkdir(parents=True, exist_ok=True)
        (dev / "ports/1/state").write_text(f"{state}\n")
    thp = root / "kernel/mm/transparent_hugepage/enabled"
    thp.parent.mkdir(parents=True, exist_ok=True)
    thp.write_text("always [madvise] never\n")
    return root


def executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fi_info_bin(directory: Path, efa: bool = True) -> Path:
    """A `fi_info` that answers like libfabric's: the efa provider listed, or -61 (no data) when absent."""
    if efa:
        body = ("echo 'provider: efa'\necho '    fabric: efa'\necho '    domain: rdmap16s27-rdm'\n"
                "echo '    version: 122.0'\necho '    type: FI_EP_RDM'\necho '    protocol: FI_PROTO_EFA'\n")
    else:
        body = "echo 'fi_getinfo: -61 (No data available)' >&2\nexit 1\n"
    return executable(directory / "fi_info", body)


def env_with_path(directory: Path, **extra: str) -> dict:
    return {"PATH": f"{directory}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
