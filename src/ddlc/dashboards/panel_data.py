"""The numbers behind each panel of the local dashboard: from Prometheus when given, else the run store and
this machine. Returned as plain JSON-ready dicts: {panel id: {"series": [...], "message": str|None}}."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

from ddlc.dashboards.cost import Pricing, cost_by_node, cost_series, idle_gpu_hours, run_cost
from ddlc.dashboards.definition import DASHBOARDS, LocalSource, Panel, dashboard
from ddlc.dashboards.prometheus import PrometheusClient, render_legend
from ddlc.dashboards.runs import RunRecord, list_runs, load_run
from ddlc.dashboards.sampler import HostSampler
from ddlc.errors import UserError

PROMETHEUS_WINDOW_S = 3600.0  # without a run, Prometheus panels show the last hour


def _clean(values: list[float]) -> list[Optional[float]]:
    return [None if (v is None or not math.isfinite(v)) else v for v in values]


def _series(name: str, times: list[float], values: list[float]) -> dict[str, Any]:
    return {"name": name, "x": [t * 1000.0 for t in times], "y": _clean(values)}


def _by_step(name: str, run: RunRecord, values: list[float]) -> dict[str, Any]:
    """Run-store series are drawn against the step: the trainer writes its records in bursts (every
    log_interval steps), so their wall-clock times bunch up, while steps are evenly spaced."""
    return {"name": name, "x": [r["step"] for r in run.steps], "y": _clean(values), "x_kind": "step"}


class PanelData:
    def __init__(
        self,
        runs_dir: Path,
        pricing: Pricing,
        sampler: Optional[HostSampler] = None,
        prometheus: Optional[PrometheusClient] = None,
        run_path: Optional[Path] = None,
    ) -> None:
        self.runs_dir = Path(runs_dir)
        self.pricing = pricing
        self.sampler = sampler
        self.prometheus = prometheus
        self.run_path = Path(run_path) if run_path else None

    # -- runs --------------------------------------------------------------------------------------------

    def run_paths(self) -> list[Path]:
        paths = list_runs(self.runs_dir)
        if self.run_path is not None and self.run_path.resolve() not in [p.resolve() for p in paths]:
            paths.append(self.run_path)
        return paths

    def run_names(self) -> list[str]:
        return [p.name for p in self.run_paths()]

    def default_run(self) -> Optional[str]:
        if self.run_path is not None:
            return self.run_path.name
        names = self.run_names()
        return names[-1] if names else None  # the most recently written

    def _load(self, name: Optional[str]) -> Optional[RunRecord]:
        if name is None:
            return None
        for path in self.run_paths():
            if path.name == name:
                return load_run(path)
        raise UserError(f"run {name!r} not found in {self.runs_dir}")

    # -- panels ------------------------------------------------------------------------------------------

    def dashboard_data(self, slug: str, run_name: Optional[str]) -> dict[str, Any]:
        try:
            board = dashboard(slug)
        except KeyError:
            raise UserError(f"unknown dashboard {slug!r}; valid: {', '.join(d.slug for d in DASHBOARDS)}") from None
        run = self._load(run_name or self.default_run())
        all_runs = [load_run(p) for p in self.run_paths()] if any(
            p.series and p.series[0].local and p.series[0].local.key in ("usd_by_run", "usd_by_node") for p in board.panels
        ) else []
        panels = {panel.id: self.panel(panel, run, all_runs) for panel in board.panels}
        return {"dashboard": slug, "run": run.name if run else None, "updated": time.time(), "panels": panels}

    def panel(self, panel: Panel, run: Optional[RunRecord], all_runs: list[RunRecord]) -> dict[str, Any]:
        series: list[dict[str, Any]] = []
        source = "local"
        if self.prometheus is not None and panel.has("promql"):
            series = self._from_prometheus(panel, run)
            source = "prometheus"
        if not series:
            source = "local"
            for spec in panel.series:
                if spec.local is not None:
                    series.extend(self._from_local(spec.local, spec.label, run, all_runs))
        has_data = any(any(v is not None for v in s["y"]) for s in series)
        return {"series": series if has_data else [], "source": source,
                "message": None if has_data else panel.empty_message}

    def _from_prometheus(self, panel: Panel, run: Optional[RunRecord]) -> list[dict[str, Any]]:
        end = time.time()
        start = end - PROMETHEUS_WINDOW_S
        if run is not None and run.start_time is not None:
            start = run.start_time - 60
            end = (run.end_time or end) + 60 if run.finished else end
        step = max((end - start) / 250.0, 1.0)
        series = []
        for spec in panel.series:
            if spec.promql is None:
                continue
            try:
                result = self.prometheus.query_range(spec.promql, start, end, step)
            except UserError:
                continue  # an unreachable Prometheus falls back to the local sources
            for labels, times, values in result:
                series.append(_series(render_legend(spec.label, labels), times, values))
        return series

    def _from_local(self, source: LocalSource, label: str, run: Optional[RunRecord],
                    all_runs: list[RunRecord]) -> list[dict[str, Any]]:
        if source.kind == "host":
            if self.sampler is None:
                return []
            return [_series(render_legend(label, {"node": self.sampler.node, "gpu": name, "device": name}), t, v)
                    for name, t, v in self.sampler.series(source)]
        if source.kind == "run":
            if run is None or not run.steps:
                return []
            values = [r.get(source.key, math.nan) for r in run.steps]
            return [_by_step(render_legend(label, {"run": run.name, "rank": "0"}), run, values)]
        return self._cost(source.key, label, run, all_runs)

    def _cost(self, key: str, label: str, run: Optional[RunRecord], all_runs: list[RunRecord]) -> list[dict[str, Any]]:
        if key == "idle_gpu_hours":
            samples: dict[str, list[tuple[float, float]]] = {}
            if self.sampler is not None:
                gpu = LocalSource("host", "ddlc_gpu_utilization_ratio", by="gpu", scale=100.0)
                samples = {name: list(zip(t, v)) for name, t, v in self.sampler.series(gpu)}
            hours = idle_gpu_hours(samples)
            return [] if hours is None else [_series("idle", [time.time()], [hours])]
        if key in ("usd_by_run", "usd_by_node"):
            costs = [run_cost(r, self.pricing) for r in all_runs if r.steps]
            if key == "usd_by_run":
                return [{"name": c.run, "x": [c.run], "y": [c.usd_total]} for c in costs]
            return [{"name": node, "x": [node], "y": [usd]} for node, usd in sorted(cost_by_node(costs).items())]
        if run is None or not run.steps:
            return []
        name = render_legend(label, {"run": run.name})
        if key == "projected_usd":
            projected = run_cost(run, self.pricing).projected_usd
            return [] if projected is None else [_series(name, [run.end_time], [projected])]
        _, values = cost_series(run, self.pricing)[key]
        return [_by_step(name, run, values)]
