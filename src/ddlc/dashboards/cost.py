"""Cost of runs from the run store and the one price table (ddlc.monitor.pricing).

    cost so far(t)     = hourly price x nodes x (t - start) / 3600
    cost per step      = cost so far / steps done in this invocation
    cost per 1M tokens = cost so far / tokens seen x 1e6
    cost per epoch     = cost so far / epochs done
    projected total    = cost so far + remaining steps x mean step seconds (last 20 steps) x hourly price x nodes / 3600
    idle GPU-hours     = sum over GPUs of the hours each spent below IDLE_GPU_UTILIZATION_PERCENT

The instance type comes from summary.json's `instance_type` when the runtime records it, else the caller's
choice (`--instance-type`), else `cpu-local` (price 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from ddlc.dashboards.definition import IDLE_GPU_UTILIZATION_PERCENT
from ddlc.dashboards.runs import RunRecord
from ddlc.monitor.pricing import LOCAL_INSTANCE_TYPE, hourly_price

RECENT_STEPS = 20


@dataclass(frozen=True)
class Pricing:
    instance_type: Optional[str]
    num_nodes: Optional[int]
    table: Mapping[str, float]

    def for_run(self, run: RunRecord) -> tuple[str, int, float]:
        instance_type = run.instance_type or self.instance_type or LOCAL_INSTANCE_TYPE
        nodes = self.num_nodes or run.num_nodes
        return instance_type, nodes, hourly_price(instance_type, self.table)


@dataclass(frozen=True)
class RunCost:
    run: str
    node: str
    instance_type: str
    num_nodes: int
    hourly_usd: float  # for the whole job (price x nodes)
    wall_hours: float
    usd_total: float
    usd_per_step: Optional[float]
    usd_per_1m_tokens: Optional[float]
    usd_per_epoch: Optional[float]
    projected_usd: Optional[float]
    steps: int
    tokens: float


def cost_series(run: RunRecord, pricing: Pricing) -> dict[str, tuple[list[float], list[float]]]:
    """Per-step cost figures as (times, values) for the time-series panels."""
    _, nodes, price = pricing.for_run(run)
    start = run.start_time
    times, total, per_step, per_million, per_epoch = [], [], [], [], []
    first_step = run.steps[0]["step"] - 1 if run.steps else 0
    for record in run.steps:
        t = record["time"]
        cost = price * nodes * (t - start) / 3600.0
        times.append(t)
        total.append(cost)
        done = record["step"] - first_step
        per_step.append(cost / done if done > 0 else math.nan)
        tokens = record.get("tokens_seen") or 0
        per_million.append(cost / tokens * 1e6 if tokens else math.nan)
        epoch = record.get("epoch") or 0
        per_epoch.append(cost / epoch if epoch else math.nan)
    return {"usd_total": (times, total), "usd_per_step": (times, per_step),
            "usd_per_1m_tokens": (times, per_million), "usd_per_epoch": (times, per_epoch)}


def run_cost(run: RunRecord, pricing: Pricing) -> RunCost:
    instance_type, nodes, price = pricing.for_run(run)
    hourly = price * nodes
    hours = run.wall_seconds / 3600.0
    total = hourly * hours
    steps = len(run.steps)
    last = run.steps[-1] if run.steps else {}
    tokens = float(last.get("tokens_seen") or 0)
    epoch = float(last.get("epoch") or 0)
    projected = None
    if run.steps:
        if run.finished:
            projected = total
        else:
            recent = [r.get("step_time_s") or 0.0 for r in run.steps[-RECENT_STEPS:]]
            seconds_per_step = sum(recent) / len(recent)
            remaining = None
            if run.target_steps:
                remaining = max(run.target_steps - int(last["step"]), 0)
            elif run.target_epochs and epoch > 0:
                steps_per_epoch = int(last["step"]) / epoch
                remaining = max(run.target_epochs * steps_per_epoch - int(last["step"]), 0)
            if remaining is not None:
                projected = total + remaining * seconds_per_step * hourly / 3600.0
    return RunCost(
        run=run.name, node=run.node, instance_type=instance_type, num_nodes=nodes, hourly_usd=hourly,
        wall_hours=hours, usd_total=total,
        usd_per_step=total / steps if steps else None,
        usd_per_1m_tokens=total / tokens * 1e6 if tokens else None,
        usd_per_epoch=total / epoch if epoch else None,
        projected_usd=projected, steps=steps, tokens=tokens,
    )


def cost_by_node(costs: Sequence[RunCost]) -> dict[str, float]:
    """Each run's cost split evenly over its nodes. The run store knows one node name per run (where it was
    written); a multi-node run's other nodes are named `<node>+1`, `<node>+2`, ..."""
    by_node: dict[str, float] = {}
    for cost in costs:
        share = cost.usd_total / cost.num_nodes
        for index in range(cost.num_nodes):
            name = cost.node if index == 0 else f"{cost.node}+{index}"
            by_node[name] = by_node.get(name, 0.0) + share
    return by_node


def idle_gpu_hours(samples: Mapping[str, Sequence[tuple[float, float]]]) -> Optional[float]:
    """Hours each GPU spent below the idle threshold, from (time, utilization percent) samples per GPU.
    None when there is no GPU sample at all (a CPU machine), so callers can say so instead of showing 0."""
    if not samples:
        return None
    hours = 0.0
    for points in samples.values():
        for (t0, value), (t1, _) in zip(points, points[1:]):
            if value < IDLE_GPU_UTILIZATION_PERCENT:
                hours += (t1 - t0) / 3600.0
    return hours
