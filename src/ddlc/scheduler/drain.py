"""`ddlc health --slurm-drain`: what slurmd's HealthCheckProgram runs on every node, every HealthCheckInterval.

    ddlc health's checks on this node
      fail -> scontrol update NodeName=<this node> State=DRAIN Reason="ddlc health: <first failed check>"
              (running jobs finish; Slurm starts no new one here)
      (a node an admin drained keeps its reason either way)
      pass -> the node is drained with a reason starting "ddlc health:"  -> State=RESUME
              drained for any other reason (an admin's)                 -> left alone
              not drained                                               -> nothing (no scontrol update)

This node is SLURMD_NODENAME (slurmd sets it for the program), else the short host name.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Mapping, Optional

from ddlc.scheduler.client import Slurm

REASON_PREFIX = "ddlc health:"
DRAINED_STATES = ("drain", "drained", "draining")  # sinfo %T spells it drained/draining (+ '*' when unresponsive)
MAX_REASON = 200


@dataclass(frozen=True)
class DrainAction:
    node: str
    action: str  # "drained", "resumed", "kept-drained" (an admin's drain), "none"
    reason: str = ""

    def line(self) -> str:
        if self.action == "drained":
            return f"slurm: drained node {self.node}: {self.reason}"
        if self.action == "resumed":
            return f"slurm: resumed node {self.node} (it was drained by ddlc health: {self.reason})"
        if self.action == "kept-drained":
            return f"slurm: node {self.node} stays drained: not drained by ddlc health ({self.reason})"
        return f"slurm: node {self.node}: nothing to change"


def node_name(env: Optional[Mapping[str, str]] = None) -> str:
    env = os.environ if env is None else env
    return env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def is_drained(state: str) -> bool:
    return any(part.rstrip("*~#!%$@^-") in DRAINED_STATES for part in state.lower().split("+"))


def apply(slurm: Slurm, node: str, first_failure: Optional[str]) -> DrainAction:
    """Drain `node` for `first_failure`, or (None: healthy) resume it if ddlc drained it."""
    row = slurm.node(node)
    drained = row is not None and is_drained(row.state)
    if drained and not row.reason.startswith(REASON_PREFIX):
        # An admin's drain: neither overwrite its reason (we would later resume it as ours) nor resume it.
        return DrainAction(node, "kept-drained", row.reason)
    if first_failure is not None:
        reason = f"{REASON_PREFIX} {' '.join(first_failure.split())}"[:MAX_REASON]
        if not (drained and row.reason == reason):
            slurm.update_node(node, "DRAIN", reason)
        return DrainAction(node, "drained", reason)
    if not drained:
        return DrainAction(node, "none")
    slurm.update_node(node, "RESUME")
    return DrainAction(node, "resumed", row.reason[len(REASON_PREFIX):].strip())
