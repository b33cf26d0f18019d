"""The node boot script's verdict, for `ddlc doctor` (and anyone else asking "did this node come up right?").

    user data (ddlc.infra.user_data) --writes--> /var/lib/ddlc/boot-status: "running" | "ok <time>" | "failed: <why>"
    check_boot(text) --> PASS | WARN (still running, or killed mid-way) | FAIL (the reason) | SKIP (not a node)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ddlc.infra.user_data import BOOT_STATUS

BOOT_STATUS_FILE = Path(BOOT_STATUS)
ANCHOR_BOOT = "node-boot-failed"


def read_boot_status(path: Path = BOOT_STATUS_FILE) -> Optional[str]:
    try:
        return path.read_text()
    except OSError:
        return None


def check_boot(status_text: Optional[str]):
    """The boot script's verdict on a cluster node: ok, still running, or failed with its reason."""
    from ddlc.ops.doctor import CheckResult, Status

    name = "node-boot"
    if status_text is None:
        return CheckResult(name, Status.SKIP, f"no {BOOT_STATUS_FILE} (not a node of a deployed ddlc cluster)")
    text = status_text.strip()
    if text.startswith("ok"):
        return CheckResult(name, Status.PASS, f"boot script finished ({text})")
    if text.startswith("failed"):
        reason = text.partition(":")[2].strip() or "no reason recorded"
        return CheckResult(name, Status.FAIL, f"boot failed: {reason}",
                           "read /var/log/ddlc-bootstrap.log, fix the cause, then replace the node", ANCHOR_BOOT)
    return CheckResult(name, Status.WARN, "boot script still running (or killed before it finished)",
                       "wait, then read /var/log/ddlc-bootstrap.log", ANCHOR_BOOT)
