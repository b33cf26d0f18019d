"""Grafana dashboards (JSON model) and provisioning files, generated from ddlc.dashboards.definition.

    ddlc dashboard export --grafana OUTDIR

writes OUTDIR/dashboards/<slug>.json, OUTDIR/provisioning/dashboards/ddlc.yaml (a file provider pointing at
the JSON files) and OUTDIR/provisioning/datasources/ddlc-prometheus.yaml (the Prometheus data source the
panels use, uid `ddlc-prometheus`). Copy `provisioning/` into Grafana's provisioning directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import yaml

from ddlc.dashboards.definition import DASHBOARDS, Dashboard, Panel, Threshold

DATASOURCE_UID = "ddlc-prometheus"
DATASOURCE_VARIABLE = "datasource"
SCHEMA_VERSION = 39
GRID_COLUMNS = 24
HEIGHT = {"timeseries": 8, "bar": 8, "stat": 5}

GRAFANA_UNITS = {
    "percent": "percent", "bytes": "bytes", "bytes_per_second": "Bps", "per_second": "pps", "seconds": "s",
    "usd": "currencyUSD", "tokens_per_second": "suffix: tok/s", "celsius": "celsius", "watts": "watt",
    "hours": "h", "count": "short", "none": "none",
}


def _datasource() -> dict[str, str]:
    return {"type": "prometheus", "uid": f"${{{DATASOURCE_VARIABLE}}}"}


def _thresholds(thresholds: tuple[Threshold, ...]) -> dict[str, Any]:
    """Grafana thresholds are steps upward from -inf: a `below is bad` line turns the base red and the line green."""
    if not thresholds:
        return {"mode": "absolute", "steps": [{"color": "green", "value": None}]}
    ordered = sorted(thresholds, key=lambda t: t.value)
    first_bad_below = ordered[0].bad == "below"
    steps: list[dict[str, Any]] = [{"color": ordered[0].color if first_bad_below else "green", "value": None}]
    for threshold in ordered:
        steps.append({"color": "green" if threshold.bad == "below" else threshold.color, "value": threshold.value})
    return {"mode": "absolute", "steps": steps}


def _targets(panel: Panel) -> list[dict[str, Any]]:
    instant = panel.kind in ("stat", "bar")
    targets = []
    for index, series in enumerate(s for s in panel.series if s.promql):
        targets.append({
            "refId": chr(ord("A") + index),
            "datasource": _datasource(),
            "expr": series.promql,
            "legendFormat": series.label,
            "range": not instant,
            "instant": instant,
        })
    return targets


def _panel(panel: Panel, panel_id: int, grid_pos: dict[str, int]) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": GRAFANA_UNITS[panel.unit], "thresholds": _thresholds(panel.thresholds)}
    if panel.unit == "percent":
        defaults.update(min=0, max=100)
    if panel.kind == "timeseries":
        grafana_type = "timeseries"
        defaults["custom"] = {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False,
            "thresholdsStyle": {"mode": "dashed" if panel.thresholds else "off"},
        }
        options: dict[str, Any] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                   "tooltip": {"mode": "multi", "sort": "desc"}}
    elif panel.kind == "stat":
        grafana_type = "stat"
        defaults["color"] = {"mode": "thresholds"}
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": "none", "textMode": "auto", "orientation": "auto",
                   "justifyMode": "auto"}
    else:
        grafana_type = "bargauge"
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "orientation": "horizontal", "displayMode": "basic", "showUnfilled": True}
    return {
        "id": panel_id,
        "type": grafana_type,
        "title": panel.title,
        "description": panel.description,
        "datasource": _datasource(),
        "gridPos": grid_pos,
        "targets": _targets(panel),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }


def _layout(panels: list[Panel]) -> list[dict[str, int]]:
    """Left to right, wrapping at 24 columns; each row as tall as its tallest panel."""
    positions, x, y, row_height = [], 0, 0, 0
    for panel in panels:
        width, height = min(panel.width, GRID_COLUMNS), HEIGHT[panel.kind]
        if x + width > GRID_COLUMNS:
            x, y, row_height = 0, y + row_height, 0
        positions.append({"h": height, "w": width, "x": x, "y": y})
        x += width
        row_height = max(row_height, height)
    return positions


def grafana_dashboard(board: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of one dashboard; panels without a PromQL query are left out."""
    panels = [panel for panel in board.panels if panel.has("promql")]
    return {
        "uid": f"ddlc-{board.slug}",
        "title": f"ddlc: {board.title}",
        "description": board.description,
        "tags": ["ddlc"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{
            "name": DATASOURCE_VARIABLE, "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {"text": "ddlc Prometheus", "value": DATASOURCE_UID}, "hide": 0, "refresh": 1,
            "options": [], "skipUrlSync": False,
        }] + _query_variables(panels)},
        "annotations": {"list": []},
        "links": [],
        "panels": [_panel(panel, index + 1, pos) for index, (panel, pos) in enumerate(zip(panels, _layout(panels)))],
    }


# The $node and $run variables the definition's queries filter on, with where their values come from: every node
# with an agent or a rank, every run with steps or a cost, in the dashboard's time range (refresh 2: on time range
# change), so finished runs stay selectable.
QUERY_VARIABLES = {
    "node": ("Node", 'label_values({__name__=~"ddlc_agent_info|ddlc_train_steps_total"}, node)'),
    "run": ("Run", 'label_values({__name__=~"ddlc_train_steps_total|ddlc_run_cost_usd"}, run)'),
}


def _query_variables(panels: list[Panel]) -> list[dict[str, Any]]:
    """The variables the panels' queries use (a dashboard without a `$run` query gets no run picker)."""
    exprs = " ".join(series.promql for panel in panels for series in panel.series if series.promql)
    variables = []
    for name, (label, query) in QUERY_VARIABLES.items():
        if f"${name}" not in exprs:
            continue
        variables.append({
            "name": name, "label": label, "type": "query", "datasource": _datasource(),
            "query": {"query": query, "refId": f"ddlc-{name}"},
            "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [], "sort": 1, "hide": 0, "skipUrlSync": False,
        })
    return variables


def provisioning_dashboards(dashboards_path: str) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [{
            "name": "ddlc", "orgId": 1, "folder": "ddlc", "type": "file", "disableDeletion": False,
            "updateIntervalSeconds": 30, "allowUiUpdates": False,
            "options": {"path": dashboards_path, "foldersFromFilesStructure": False},
        }],
    }


def provisioning_datasource(prometheus_url: str) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "datasources": [{
            "name": "ddlc Prometheus", "uid": DATASOURCE_UID, "type": "prometheus", "access": "proxy",
            "url": prometheus_url, "isDefault": False, "jsonData": {"timeInterval": "15s"},
        }],
    }


def export_grafana(outdir: Path | str, prometheus_url: str = "http://localhost:9090",
                   dashboards_path: Optional[str] = None) -> list[Path]:
    """Write the dashboards and provisioning files; returns the paths written."""
    out = Path(outdir)
    board_dir = out / "dashboards"
    board_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for board in DASHBOARDS:
        path = board_dir / f"{board.slug}.json"
        path.write_text(json.dumps(grafana_dashboard(board), indent=2) + "\n")
        written.append(path)
    provider = out / "provisioning" / "dashboards" / "ddlc.yaml"
    provider.parent.mkdir(parents=True, exist_ok=True)
    provider.write_text(yaml.safe_dump(provisioning_dashboards(dashboards_path or str(board_dir.resolve())), sort_keys=False))
    datasource = out / "provisioning" / "datasources" / "ddlc-prometheus.yaml"
    datasource.parent.mkdir(parents=True, exist_ok=True)
    datasource.write_text(yaml.safe_dump(provisioning_datasource(prometheus_url), sort_keys=False))
    return written + [provider, datasource]
