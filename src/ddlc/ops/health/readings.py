"""Everything the health checks look at, read once from the live node or loaded from a recording.

    NVML (count, volatile uncorrected ECC, remapped rows)   /dev/kmsg ("NVRM: Xid ...")   /sys/class/infiniband
    /sys/devices/virtual/dmi/id/product_name (EC2 instance type)   disk free   time.time() + adjtimex sync state
      -> NodeReadings (JSON-serialisable: `ddlc health --record FILE` writes one, `--readings FILE` replays it)

Every reader takes its source as an argument (an NVML module, a sysfs root, a kmsg path) so tests can hand it a
stand-in, as ddlc.monitor.gpu does. A source that cannot be read is recorded as such, never raised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import pydantic

NVML_MEMORY_ERROR_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0  # since the driver loaded: what a reset clears
KMSG = Path("/dev/kmsg")
# The NVIDIA driver logs each Xid as "NVRM: Xid (PCI:0000:10:1c): 79, pid=..., GPU has fallen off the bus."
_XID_RE = re.compile(r"NVRM: Xid \((?:PCI:)?([^)]*)\): (\d+),?\s*(.*)")


@dataclass
class GpuReading:
    index: int
    name: str = ""
    uncorrected_ecc: Optional[int] = None  # None: not supported (ECC off) or not readable
    remap_pending: Optional[bool] = None
    remap_failed: Optional[bool] = None


@dataclass
class XidEvent:
    code: int
    device: str
    message: str = ""


@dataclass
class NodeReadings:
    gpus: list[GpuReading] = field(default_factory=list)
    nvml_error: Optional[str] = None  # why NVML could not be read (no driver, not installed); None when it could
    xids: Optional[list[XidEvent]] = None  # since the driver loaded; None: the kernel log was not readable
    xid_source_error: Optional[str] = None
    instance_type: Optional[str] = None
    efa_devices: list[str] = field(default_factory=list)
    disk_path: str = "/"
    disk_free_bytes: Optional[int] = None
    disk_error: Optional[str] = None
    now: float = 0.0
    clock_synchronized: Optional[bool] = None  # kernel NTP state; None when unknown
    environment: dict[str, str] = field(default_factory=dict)  # DDLC_* settings the expectations come from

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> "NodeReadings":
        """A recording, checked field by field: a wrong type or a non-finite number is a ValueError naming the
        field (a hand-edited file must not crash a check or pass one, as `"now": 1e400` would pass the clock)."""
        try:
            return _READINGS.validate_python(data)
        except pydantic.ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the file"
            raise ValueError(f"{where}: {first['msg']}") from None


# Recordings are validated as pydantic validates a model: unknown fields and inf/nan are refused.
for _cls in (NodeReadings, GpuReading, XidEvent):
    _cls.__pydantic_config__ = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)  # type: ignore[attr-defined]
_READINGS = pydantic.TypeAdapter(NodeReadings)


# -- NVML ---------------------------------------------------------------------------------------------------
def load_nvml() -> tuple[Any, Optional[str]]:
    try:
        import pynvml
    except ImportError as error:
        return None, f"nvidia-ml-py is not installed ({error})"
    return pynvml, None


def read_nvml(nvml: Any) -> tuple[list[GpuReading], Optional[str]]:
    """Per-GPU readings, or ([], why) when NVML cannot start (no driver: a GPU node that lost it is unhealthy)."""
    try:
        nvml.nvmlInit()
    except Exception as error:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], f"{type(error).__name__}: {error}"
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            reading = GpuReading(index, _text(_try(nvml.nvmlDeviceGetName, handle)))
            reading.uncorrected_ecc = _try(nvml.nvmlDeviceGetTotalEccErrors, handle, NVML_MEMORY_ERROR_UNCORRECTED,
                                           NVML_VOLATILE_ECC)
            remap = _try(nvml.nvmlDeviceGetRemappedRows, handle)  # (corrected, uncorrected, pending, failure)
            if remap is not None:
                reading.remap_pending, reading.remap_failed = bool(remap[2]), bool(remap[3])
            gpus.append(reading)
        return gpus, None
    except Exception as error:  # a GPU that stops answering mid-read is itself the finding
        return [], f"{type(error).__name__}: {error}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _try(query: Any, *args: Any) -> Any:
    try:
        return query(*args)
    except Exception:  # NVML_ERROR_NOT_SUPPORTED (ECC off, pre-Ampere remapping): that value only
        return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else ("" if value is None else str(value))


# -- kernel log ---------------------------------------------------------------------------------------------
def read_kernel_xids(path: Path = KMSG) -> tuple[Optional[list[XidEvent]], Optional[str]]:
    """Every Xid the driver logged since boot. /dev/kmsg hands out one record per read and EAGAIN at the end
    (opened non-blocking); a recorded log in a plain file is read the same way, line by line."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        return None, f"{path}: {error.strerror or error}"
    events: list[XidEvent] = []
    try:
        if not os.path.isfile(path):
            records = _read_records(fd)
        else:
            with os.fdopen(os.dup(fd), "rb") as handle:
                records = handle.read().split(b"\n")
        for record in records:
            match = _XID_RE.search(record.decode(errors="replace"))
            if match:
                events.append(XidEvent(int(match.group(2)), match.group(1).strip(), match.group(3).strip()))
    finally:
        os.close(fd)
    return events, None


def _read_records(fd: int) -> list[bytes]:
    records = []
    while True:
        try:
            record = os.read(fd, 8192)
        except BlockingIOError:
            return records
        except OSError as error:
            if error.errno == errno.EPIPE:  # the ring buffer overwrote the record we were at: read on
                continue
            raise
        if not record:
            return records
        records.append(record)


# -- sysfs, disk, clock -------------------------------------------------------------------------------------
def read_efa_devices(sys_root: Path = Path("/sys")) -> list[str]:
    """RDMA devices bound to the efa driver (or named efa*) under /sys/class/infiniband."""
    root = sys_root / "class/infiniband"
    found = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            driver = (entry / "device/driver").resolve(strict=True).name
        except OSError:
            driver = ""
        if driver == "efa" or entry.name.startswith("efa"):
            found.append(entry.name)
    return found


def read_instance_type(sys_root: Path = Path("/sys")) -> Optional[str]:
    """On EC2 Nitro instances the DMI product name is the instance type (p4d.24xlarge)."""
    try:
        name = (sys_root / "devices/virtual/dmi/id/product_name").read_text().strip()
    except OSError:
        return None
    return name or None


def read_disk(path: Path) -> tuple[Optional[int], Optional[str]]:
    where = Path(path).expanduser().absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return shutil.disk_usage(where).free, None
    except OSError as error:
        return None, f"{where}: {error.strerror or error}"


_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronized


def read_clock_synchronized() -> Optional[bool]:
    """The kernel's NTP state through adjtimex(2) with modes=0 (read-only); None where it cannot be asked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = ctypes.create_string_buffer(512)  # larger than struct timex on every ABI; modes=0 reads only
        state = libc.adjtimex(timex)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


def collect(nvml: Any = None, sys_root: Path = Path("/sys"), kmsg: Path = KMSG, disk_path: Path = Path("/"),
            environment: Optional[dict[str, str]] = None) -> NodeReadings:
    """Read the live node. `nvml`: the NVML module (default: pynvml when installed)."""
    error = None
    if nvml is None:
        nvml, error = load_nvml()
    gpus, nvml_error = read_nvml(nvml) if nvml is not None else ([], error)
    xids, xid_error = read_kernel_xids(kmsg)
    free, disk_error = read_disk(disk_path)
    return NodeReadings(
        gpus=gpus, nvml_error=nvml_error, xids=xids, xid_source_error=xid_error,
        instance_type=read_instance_type(sys_root), efa_devices=read_efa_devices(sys_root),
        disk_path=str(disk_path), disk_free_bytes=free, disk_error=disk_error, now=time.time(),
        clock_synchronized=read_clock_synchronized(),
        environment={k: v for k, v in (environment or {}).items() if k.startswith("DDLC_")},
    )
