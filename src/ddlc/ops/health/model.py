"""What a health check returns, what it is given, and the `--json` document."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence


@dataclass(frozen=True)
class HealthResult:
    check: str  # also the `check` label of ddlc_node_healthy
    ok: bool
    detail: str
    skipped: bool = False  # the input was not readable here (counted as healthy, said so in the detail)

    def line(self) -> str:
        return f"{self.check}: {self.detail}"


@dataclass
class HealthOptions:
    expect_gpus: Optional[int] = None  # default: DDLC_GPUS_PER_NODE on a cluster worker, else the instance type's
    expect_efa: Optional[int] = None  # default: the instance type's EFA interfaces (0 when unknown)
    disk_path: Path = Path("/")
    min_free_gb: float = 10.0
    reference_time: Optional[float] = None  # epoch seconds of another clock (the launcher's) to compare with
    max_skew_s: float = 30.0
    require_ntp: Optional[bool] = None  # default: on cluster nodes (DDLC_ROLE set)


def failures(results: Sequence[HealthResult]) -> list[HealthResult]:
    return [r for r in results if not r.ok]


def report(results: Sequence[HealthResult], node: str) -> dict:
    return {"healthy": not failures(results), "node": node, "checks": [asdict(r) for r in results]}
