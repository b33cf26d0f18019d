"""The numbers behind each panel of the local dashboard: from Prometheus when given, else the run store and
this machine. Returned as plain JSON-ready dicts: {panel id: {"series": [...], "message": str|None}}.

    RunStore (each run file parsed once, re-read on change) -> RunRecord columns
      -> per-run panels: min/max downsampled to <= 2,000 points (stat panels: the last point)
      -> cost panels over all runs: RunCost cached per run version
    an unreadable run: its panels say why (one line), every other run shows as normal
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

from ddlc.dashboards.cost import Pricing, cost_by_node, cost_series, idle_cost_usd, idle_gpu_hours, run_cost
from ddlc.dashboards.definition import DASHBOARDS, NO_PROMETHEUS, LocalSource, Panel, dashboard
from ddlc.dashboards.prometheus import PrometheusClient, render_legend
from ddlc.dashboards.downsample import MAX_POINTS, minmax
from ddlc.dashboards.runs import RunRecord, RunStore
from ddlc.dashboards.sampler import HostSampler
from ddlc.errors import UserError

PROMETHEUS_WINDOW_S = 3600.0  # without a run, Prometheus panels show the last hour


def _clean(values: Any) -> list[Optional[float]]:
    return [None if (v is None or not math.isfinite(v)) else float(v) for v in values]


def _series(name: str, times: list[float], values: list[float]) -> dict[str, Any]:
    return {"name": name, "x": [t * 1000.0 for t in times], "y": _clean(values)}


def _by_step(name: str, run: RunRecord, values: Any, last_only: bool = False) -> dict[str, Any]:
    """Run-store series are drawn against the step: the trainer writes its records in bursts (every
    log_interval steps), so their wall-clock times bunch up, while steps are evenly spaced."""
    steps = run.columns["step"]
    if last_only:  # a stat panel shows the latest value it has
        last = next((i for i in range(len(values) - 1, -1, -1) if math.isfinite(values[i])), len(values) - 1)
        x, y = [steps[last]], [values[last]]
    else:
        x, y = minmax(steps, values, MAX_POINTS)
    return {"name": name, "x": [int(v) for v in x], "y": _clean(y), "x_kind": "step"}


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
        # The Cost tab reads every run; clients refreshing within a second share one look at the disk.
        self.store = RunStore(self.runs_dir, [self.run_path] if self.run_path else [], max_age_s=1.0)
        self._cache: dict[tuple, Any] = {}  # (what, run path, run version) -> RunCost, cost series

    # -- runs --------------------------------------------------------------------------------------------

    def run_paths(self) -> list[Path]:
        return self.store.paths()

    def run_names(self) -> list[str]:
        return [p.name for p in self.run_paths()]

    def run_errors(self) -> dict[str, str]:
        """Unreadable runs and why, for the run picker."""
        return {run.name: run.error for run in (self.store.load(p) for p in self.run_paths()) if run.error}

    def default_run(self, paths: Optional[list[Path]] = None) -> Optional[str]:
        if self.run_path is not None:
            return self.run_path.name
        names = [p.name for p in (self.run_paths() if paths is None else paths)]
        return names[-1] if names else None  # the most recently written

    def _load(self, name: Optional[str], paths: Optional[list[Path]] = None) -> Optional[RunRecord]:
        if name is None:
            return None
        for path in self.run_paths() if paths is None else paths:
            if path.name == name:
                return self.store.load(path)
        shown = name if len(name) <= 80 else name[:60] + "..."
        raise UserError(f"run {shown!r} not found in {self.runs_dir}")

    def _derived(self, kind: str, run: RunRecord, compute: Any) -> Any:
        """`compute(run)`, once per version of the run (a live run gets a new version when it logs)."""
        key = (kind, run.path, run.version)
        value = self._cache.get(key)
        if value is None:
            if len(self._cache) > 4096:  # versions of live runs pile up: start afresh
                self._cache = {}
            value = self._cache[key] = compute(run)
        return value

    def _run_cost(self, run: RunRecord):
        return self._derived("cost", run, lambda r: run_cost(r, self.pricing))

    # -- panels ------------------------------------------------------------------------------------------

    def dashboard_data(self, slug: str, run_name: Optional[str]) -> dict[str, Any]:
        try:
            board = dashboard(slug)
        except KeyError:
            shown = slug if len(slug) <= 80 else slug[:60] + "..."
            raise UserError(f"unknown dashboard {shown!r}; valid: {', '.join(d.slug for d in DASHBOARDS)}") from None
        paths = self.run_paths()  # one look at the run store per request
        run = self._load(run_name or self.default_run(paths), paths)
        all_runs = self.store.runs(paths=paths) if any(
            p.series and p.series[0].local and p.series[0].local.key in ("usd_by_run", "usd_by_node", "idle_usd")
            for p in board.panels
        ) else []
        if any(spec.local is not None and spec.local.kind == "cost" for p in board.panels for spec in p.series):
            # A run whose instance type has no price is unreadable for cost only: named, never failing the tab.
            run = self.pricing.check(run) if run is not None else None
            all_runs = [self.pricing.check(r) for r in all_runs]
        panels = {panel.id: self.panel(panel, run, all_runs) for panel in board.panels}
        return {"dashboard": slug, "run": run.name if run else None, "run_error": run.error if run else None,
                "unreadable": {r.name: r.error for r in all_runs if r.error}, "updated": time.time(), "panels": panels}

    def panel(self, panel: Panel, run: Optional[RunRecord], all_runs: list[RunRecord]) -> dict[str, Any]:
        series: list[dict[str, Any]] = []
        source = "local"
        prometheus_error: Optional[str] = None
        if self.prometheus is not None and panel.has("promql"):
            series, prometheus_error = self._from_prometheus(panel, run)
            source = "prometheus"
        if not series:
            source = "local"
            for spec in panel.series:
                if spec.local is not None:
                    series.extend(self._from_local(spec.local, spec.label, run, all_runs, panel.kind == "stat"))
        has_data = any(any(v is not None for v in s["y"]) for s in series)
        message = panel.empty_message
        if self.prometheus is not None and panel.has("promql"):
            message = empty_message(message, self.prometheus.url, prometheus_error)
        uses_run = any(spec.local is not None and spec.local.kind in ("run", "cost") for spec in panel.series)
        if run is not None and run.error and uses_run and not has_data:
            message = f"run {run.name} is unreadable: {run.error}"
        note = None
        bad = [r for r in all_runs if r.error]
        if bad and any(spec.local is not None and spec.local.key in ("usd_by_run", "usd_by_node") for spec in panel.series):
            note = f"{len(bad)} unreadable run(s) left out: " + "; ".join(f"{r.name}: {r.error}" for r in bad[:3])
            note += " …" if len(bad) > 3 else ""
        return {"series": series if has_data else [], "source": source,
                "message": None if has_data else message, "note": note}

    def _from_prometheus(self, panel: Panel, run: Optional[RunRecord]) -> tuple[list[dict[str, Any]], Optional[str]]:
        """The panel's series from Prometheus, and why a query failed (None when all answered)."""
        end = time.time()
        start = end - PROMETHEUS_WINDOW_S
        if run is not None and run.start_time is not None:
            start = run.start_time - 60
            end = (run.end_time or end) + 60 if run.finished else end
        step = max((end - start) / 250.0, 1.0)
        series, error = [], None
        for spec in panel.series:
            if spec.promql is None:
                continue
            try:
                result = self.prometheus.query_range(spec.promql, start, end, step)
            except UserError as failure:
                error = str(failure)
                continue  # an unreachable Prometheus falls back to the local sources
            for labels, times, values in result:
                series.append(_series(render_legend(spec.label, labels), times, values))
        return series, error

    def _from_local(self, source: LocalSource, label: str, run: Optional[RunRecord],
                    all_runs: list[RunRecord], last_only: bool = False) -> list[dict[str, Any]]:
        if source.kind == "host":
            if self.sampler is None:
                return []
            return [_series(render_legend(label, {"node": self.sampler.node, "gpu": name, "device": name,
                                                              "state": name}), t, v)
                    for name, t, v in self.sampler.series(source)]
        if source.kind == "run":
            if run is None or not run.has_steps:
                return []
            values = run.column(source.key)
            name = render_legend(label, {"run": run.name, "rank": "0"})
            if source.sparse:  # only the evaluated steps: gaps elsewhere would hide the line
                kept = [(int(step), value) for step, value in zip(run.columns["step"], values) if math.isfinite(value)]
                if not kept:
                    return []
                if last_only:
                    kept = kept[-1:]
                return [{"name": name, "x": [k[0] for k in kept], "y": _clean([k[1] for k in kept]),
                         "x_kind": "step"}]
            return [_by_step(name, run, values, last_only)]
        return self._cost(source.key, label, run, all_runs, last_only)

    def _cost(self, key: str, label: str, run: Optional[RunRecord], all_runs: list[RunRecord],
              last_only: bool = False) -> list[dict[str, Any]]:
        if key == "idle_gpu_hours":
            samples: dict[str, list[tuple[float, float]]] = {}
            if self.sampler is not None:
                gpu = LocalSource("host", "ddlc_gpu_utilization_ratio", by="gpu", scale=100.0)
                samples = {name: list(zip(t, v)) for name, t, v in self.sampler.series(gpu)}
            hours = idle_gpu_hours(samples)
            return [] if hours is None else [_series("idle", [time.time()], [hours])]
        if key == "idle_usd":
            return self._idle_cost(all_runs)
        if key in ("usd_by_run", "usd_by_node"):
            costs = [self._run_cost(r) for r in all_runs if r.readable and r.has_steps]
            if key == "usd_by_run":
                return [{"name": c.run, "x": [c.run], "y": [c.usd_total]} for c in costs]
            return [{"name": node, "x": [node], "y": [usd]} for node, usd in sorted(cost_by_node(costs).items())]
        if run is None or not run.readable or not run.has_steps:
            return []
        name = render_legend(label, {"run": run.name})
        if key == "projected_usd":
            projected = self._run_cost(run).projected_usd
            return [] if projected is None else [_series(name, [run.end_time], [projected])]
        _, values = self._derived("cost_series", run, lambda r: cost_series(r, self.pricing))[key]
        return [_by_step(name, run, values, last_only)]

    def _idle_cost(self, all_runs: list[RunRecord]) -> list[dict[str, Any]]:
        """This machine since the sampler started, minus the time runs of the store were going on it, priced as
        --instance-type (cpu-local: 0)."""
        from ddlc.monitor.pricing import LOCAL_INSTANCE_TYPE

        hourly = self.pricing.table.get(self.pricing.instance_type or LOCAL_INSTANCE_TYPE)
        if self.sampler is None or hourly is None:  # no price: the panel says so, the tab still works
            return []
        now = time.time()
        # A run is busy from its first step to its last; one still logging (a step in the last 5 minutes, as
        # Prometheus' staleness) up to now. A run that crashed stops counting at its last step.
        busy = [(r.start_time, now if not r.finished and now - r.end_time < 300 else r.end_time) for r in all_runs
                if r.readable and r.has_steps and r.start_time is not None and r.node == self.sampler.node]
        return [_series("idle", [now], [idle_cost_usd(self.sampler.started_at, now, busy, hourly)])]


def empty_message(message: str, url: str, error: Optional[str]) -> str:
    """A panel's "no data" reason when a Prometheus URL was given: what Prometheus answered, instead of
    "no Prometheus URL was given"."""
    if not message.endswith(NO_PROMETHEUS):
        return message
    base = message[: -len(NO_PROMETHEUS)]
    if error is not None:
        reason = error.removeprefix("--prometheus: ")
        return f"{base}, and Prometheus gave no answer ({reason[:200]})."
    return f"{base}, and Prometheus at {url} has no series for this panel in the time shown."
