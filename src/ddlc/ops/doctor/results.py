"""Check results: status, one-line detail, fix and troubleshooting anchor; the `--json` report."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Sequence


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
ANCHOR_SHARED = "checkpoint-location-not-shared-by-all-nodes"
ANCHOR_PORT = "master-port-already-in-use"
ANCHOR_HOSTS = "clock-skew-and-version-drift-between-nodes"


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
