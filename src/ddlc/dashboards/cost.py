"""Cost of runs from the run store and the one price table (ddlc.monitor.pricing).

    cost so far(t)     = hourly price x nodes x (t - start) / 3600
    cost per step      = cost so far / steps done in this invocation
    cost per 1M tokens = cost so far / tokens seen x 1e6
    cost per epoch     = cost so far / epochs done
    projected total    = cost so far + remaining steps x mean step seconds (last 20 steps) x hourly price x nodes / 3600
    idle GPU-hours     = sum over GPUs of the hours each spent below IDLE_GPU_UTILIZATION_PERCENT

The instance type comes from summary.json's `instance_type` when the runtime records it, else the caller's
choice (`--instance-type`), else `cpu-local` (price 0); the nodes likewise from summary.json's `num_nodes`, else
`--nodes`, else 1.
"""

from __future__ import annotations

import dataclasses
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
        # What the run recorded wins, as for the instance type; the option fills in for runs that recorded none.
        nodes = run.recorded_num_nodes or self.num_nodes or 1
        return instance_type, nodes, hourly_price(instance_type, self.table)

    def check(self, run: RunRecord) -> RunRecord:
        """The run as the cost views see it: one whose summary.json names an instance type the price table lacks
        is marked unreadable (with the reason) instead of failing the whole Cost tab or report for every run."""
        if not run.readable:
            return run
        instance_type = run.instance_type or self.instance_type or LOCAL_INSTANCE_TYPE
        if instance_type in self.table:
            return run
        shown = instance_type if len(instance_type) <= 80 else instance_type[:60] + "..."
        where = "summary.json: instance_type" if run.instance_type else "--instance-type"
        return dataclasses.replace(run, error=f"{where} {shown!r} has no price in the price table "
                                              "(add it with --price-table or $DDLC_PRICE_TABLE)")


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
    times = list(run.column("time"))
    if not times:
        return {key: ([], []) for key in ("usd_total", "usd_per_step", "usd_per_1m_tokens", "usd_per_epoch")}
    rate = price * nodes / 3600.0
    total = [rate * (t - start) for t in times]
    first_step = run.columns["step"][0] - 1
    per_step = [c / (s - first_step) if s > first_step else math.nan for c, s in zip(total, run.columns["step"])]
    per_million = [c / k * 1e6 if k and math.isfinite(k) else math.nan for c, k in zip(total, run.column("tokens_seen"))]
    per_epoch = [c / e if e and math.isfinite(e) else math.nan for c, e in zip(total, run.column("epoch"))]
    return {"usd_total": (times, total), "usd_per_step": (times, per_step),
            "usd_per_1m_tokens": (times, per_million), "usd_per_epoch": (times, per_epoch)}


def _finite_or_zero(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def run_cost(run: RunRecord, pricing: Pricing) -> RunCost:
    instance_type, nodes, price = pricing.for_run(run)
    hourly = price * nodes
    hours = run.wall_seconds / 3600.0
    total = hourly * hours
    steps = run.num_steps
    tokens = _finite_or_zero(run.last("tokens_seen"))
    epoch = _finite_or_zero(run.last("epoch"))
    projected = None
    if steps:
        if run.finished:
            projected = total
        else:
            recent = [_finite_or_zero(v) for v in run.column("step_time_s")[-RECENT_STEPS:]]
            seconds_per_step = sum(recent) / len(recent)
            last_step = int(run.columns["step"][-1])
            remaining = None
            if run.target_steps:
                remaining = max(run.target_steps - last_step, 0)
            elif run.target_epochs and epoch > 0:
                steps_per_epoch = last_step / epoch
                remaining = max(run.target_epochs * steps_per_epoch - last_step, 0)
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


def idle_cost_usd(start: float, end: float, busy: Sequence[tuple[float, float]], hourly_usd: float) -> float:
    """hourly x the hours of [start, end] that no busy interval covers (overlapping intervals count once)."""
    if end <= start:
        return 0.0
    covered, reach = 0.0, start
    for low, high in sorted((max(a, start), min(b, end)) for a, b in busy):
        if high <= reach:
            continue
        covered += high - max(low, reach)
        reach = high
    return hourly_usd * max(end - start - covered, 0.0) / 3600.0
