"""Slurm's queue and nodes as metrics, read from `squeue` and `sinfo` when Prometheus scrapes the head's agent.

    ddlc agent --slurm-metrics (the head node, scheduler=slurm)      ddlc dashboard (where squeue/sinfo exist)
        └─ SlurmCollector.collect()
              squeue --noheader --all --array --format=%T   -> one job (array task) per line: PENDING, RUNNING, ...
              sinfo --noheader --Node --format=%N|%T         -> node|state per node and partition (deduplicated)
           -> ddlc_slurm_up, ddlc_slurm_jobs{state}, ddlc_slurm_queue_length, ddlc_slurm_nodes{state}

Every state is exported on every scrape (0 when none), so a series never disappears when its count drops to
zero. sinfo's state carries flag characters (`down*`: not responding, `idle~`: powered off, `drained@`,
...): they are stripped before the state is counted. When either command fails or times out only
`ddlc_slurm_up 0` is exported (no controller: no numbers, rather than zeros that look like an empty queue).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Callable, Iterator, Mapping, Optional, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

SQUEUE = ("squeue", "--noheader", "--all", "--array", "--format=%T")
SINFO = ("sinfo", "--noheader", "--Node", "--format=%N|%T")
JOB_STATES = ("pending", "running", "other")
NODE_STATES = ("idle", "allocated", "mixed", "drained", "draining", "down", "other")
_NODE_ALIASES = {"alloc": "allocated", "drng": "draining", "drain": "drained", "comp": "allocated",
                 "completing": "allocated"}
_STATE_FLAGS = "*~#!%$@^-"
TIMEOUT_S = 10.0

Runner = Callable[[Sequence[str]], Optional[str]]


def run_slurm_command(argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The command's standard output, or None when it is missing, fails or hangs."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT_S,
                                env=dict(env) if env is not None else None)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def slurm_available() -> bool:
    return bool(shutil.which("squeue") and shutil.which("sinfo"))


def count_jobs(squeue_output: str) -> dict[str, int]:
    counts = dict.fromkeys(JOB_STATES, 0)
    for line in squeue_output.splitlines():
        state = line.strip().lower()
        if state:
            counts[state if state in counts else "other"] += 1
    return counts


def node_state(raw: str) -> str:
    # "down*", "idle~", "mixed+drain" (a base state with flags): the base state decides.
    state = raw.strip().lower().split("+", 1)[0].rstrip(_STATE_FLAGS)
    state = _NODE_ALIASES.get(state, state)
    return state if state in NODE_STATES else "other"


def count_nodes(sinfo_output: str) -> dict[str, int]:
    """One state per node: sinfo --Node prints a node once per partition it is in."""
    states: dict[str, str] = {}
    for line in sinfo_output.splitlines():
        name, sep, raw = line.strip().partition("|")
        if sep and name:
            states.setdefault(name, node_state(raw))
    counts = dict.fromkeys(NODE_STATES, 0)
    for state in states.values():
        counts[state] += 1
    return counts


class SlurmCollector:
    """Cluster-wide Slurm state; register it on one agent only (the head's), or every node repeats it."""

    def __init__(self, node: str, run: Optional[Runner] = None) -> None:
        self.node = node
        self._run = run or run_slurm_command

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ddlc_slurm_up", "1 if squeue and sinfo answered on the last scrape, else 0.",
                               labels=["node"])
        queue, nodes = self._run(SQUEUE), self._run(SINFO)
        up.add_metric([self.node], 0 if queue is None or nodes is None else 1)
        yield up
        if queue is None or nodes is None:
            return
        jobs = count_jobs(queue)
        family = GaugeMetricFamily("ddlc_slurm_jobs", "Slurm jobs (array tasks counted one by one) by state.",
                                   labels=["node", "state"])
        for state, count in jobs.items():
            family.add_metric([self.node, state], count)
        yield family
        length = GaugeMetricFamily("ddlc_slurm_queue_length", "Slurm jobs waiting to start (state PENDING).",
                                   labels=["node"])
        length.add_metric([self.node], jobs["pending"])
        yield length
        family = GaugeMetricFamily("ddlc_slurm_nodes", "Slurm compute nodes by state (drained: taken out of "
                                   "service, e.g. by a failed ddlc health check).", labels=["node", "state"])
        for state, count in count_nodes(nodes).items():
            family.add_metric([self.node, state], count)
        yield family
