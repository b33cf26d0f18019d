"""GPU checks: the expected number of GPUs, hardware Xid errors, uncorrected ECC errors, row remapping."""

from __future__ import annotations

from typing import Optional

from ddlc.ops.health.model import HealthResult
from ddlc.ops.health.readings import NodeReadings

# Xids that mean the hardware (GPU, HBM, NVLink, the bus) needs a reset or a replacement. Others (13 graphics
# engine exception, 31 MMU fault, 43 stopped context, 45 preemptive cleanup) are what a faulty program causes.
HARDWARE_XIDS = {
    48: "double-bit ECC error", 61: "internal micro-controller breakpoint", 62: "internal micro-controller halt",
    63: "ECC page retirement / row remapping event", 64: "ECC page retirement / row remapping failure",
    74: "NVLink error", 79: "GPU has fallen off the bus", 92: "high single-bit ECC error rate",
    94: "contained ECC error", 95: "uncontained ECC error", 119: "GSP RPC timeout", 120: "GSP error",
    121: "C2C link error", 140: "unrecovered ECC error",
}


def check_gpu_count(readings: NodeReadings, expected: Optional[int]) -> HealthResult:
    visible = len(readings.gpus)
    why = f" (NVML: {readings.nvml_error})" if readings.nvml_error else ""
    if expected is None:
        return HealthResult("gpus", True, f"{visible} GPUs visible; no expected count{why}")
    if visible != expected:
        return HealthResult("gpus", False, f"{visible} of {expected} expected GPUs visible{why}")
    return HealthResult("gpus", True, f"{visible} of {expected} GPUs visible")


def check_xid(readings: NodeReadings) -> HealthResult:
    """Hardware Xids since the driver loaded (boot): the GPU stays suspect until it is reset, so a later check
    must not pass just because the error is no longer the newest line of the log."""
    if readings.xids is None:
        return HealthResult("xid", True, f"kernel log not readable ({readings.xid_source_error}); not checked",
                            skipped=True)
    hardware = [x for x in readings.xids if x.code in HARDWARE_XIDS]
    if hardware:
        seen = sorted({(x.code, x.device) for x in hardware})
        listed = ", ".join(f"Xid {code} ({HARDWARE_XIDS[code]}) on {device}" for code, device in seen)
        return HealthResult("xid", False, f"{listed} since boot")
    others = sorted({x.code for x in readings.xids})
    note = f" (application Xids {', '.join(map(str, others))} ignored)" if others else ""
    return HealthResult("xid", True, f"no hardware Xid since boot{note}")


def check_ecc(readings: NodeReadings) -> HealthResult:
    bad = [g for g in readings.gpus if g.uncorrected_ecc]
    if bad:
        listed = ", ".join(f"GPU {g.index}: {g.uncorrected_ecc}" for g in bad)
        return HealthResult("ecc", False, f"uncorrected ECC errors since the driver loaded ({listed})")
    readable = sum(g.uncorrected_ecc is not None for g in readings.gpus)
    return HealthResult("ecc", True, f"no uncorrected ECC errors ({readable} of {len(readings.gpus)} GPUs report ECC)")


def check_row_remap(readings: NodeReadings) -> HealthResult:
    failed = [g.index for g in readings.gpus if g.remap_failed]
    pending = [g.index for g in readings.gpus if g.remap_pending]
    problems = []
    if failed:
        problems.append(f"row remapping failed on GPU {', '.join(map(str, failed))} (replace the node)")
    if pending:
        problems.append(f"row remap pending on GPU {', '.join(map(str, pending))} (needs a GPU reset or reboot)")
    if problems:
        return HealthResult("row_remap", False, "; ".join(problems))
    return HealthResult("row_remap", True, "no pending or failed row remaps")
