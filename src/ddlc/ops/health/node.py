"""Node checks: EFA devices where the instance type has them, free disk, a sane clock."""

from __future__ import annotations

import time
from ddlc.ops.health.model import HealthOptions, HealthResult
from ddlc.ops.health.readings import NodeReadings

EARLIEST_SANE_TIME = time.mktime((2024, 1, 1, 0, 0, 0, 0, 0, 0))  # a dead RTC boots in 1970


def check_efa(readings: NodeReadings, expected: int) -> HealthResult:
    found = len(readings.efa_devices)
    where = f" ({readings.instance_type})" if readings.instance_type else ""
    if found < expected:
        return HealthResult("efa", False, f"{found} of {expected} EFA devices present{where}")
    if not expected:
        return HealthResult("efa", True, f"no EFA expected{where}; {found} present")
    return HealthResult("efa", True, f"{found} of {expected} EFA devices present{where}")


def check_disk(readings: NodeReadings, min_free_gb: float) -> HealthResult:
    if readings.disk_free_bytes is None:
        return HealthResult("disk", False, f"cannot read free space: {readings.disk_error}")
    free_gb = readings.disk_free_bytes / 1e9
    detail = f"{free_gb:,.1f} GB free on {readings.disk_path} (need >= {min_free_gb:g} GB)"
    return HealthResult("disk", free_gb >= min_free_gb, detail)


def check_clock(readings: NodeReadings, options: HealthOptions, require_ntp: bool) -> HealthResult:
    now = readings.now
    if now < EARLIEST_SANE_TIME:
        return HealthResult("clock", False, f"clock reads {time.strftime('%Y-%m-%d', time.gmtime(now))} (before 2024)")
    problems = []
    if options.reference_time is not None:
        skew = now - options.reference_time
        if abs(skew) > options.max_skew_s:
            problems.append(f"{skew:+.1f} s off the launcher's clock (limit {options.max_skew_s:g} s)")
    sync = {True: "NTP-synchronized", False: "not NTP-synchronized", None: "NTP state unknown"}
    if require_ntp and readings.clock_synchronized is False:
        problems.append("not synchronized by NTP (chronyc tracking)")
    if problems:
        return HealthResult("clock", False, "; ".join(problems))
    return HealthResult("clock", True, f"{sync[readings.clock_synchronized]}")
