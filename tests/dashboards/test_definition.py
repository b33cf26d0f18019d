"""The one definition: four dashboards, consistent ids, units every renderer knows, the same 80% target."""

from __future__ import annotations

import re

import yaml

from ddlc.dashboards.definition import DASHBOARDS, GPU_UTILIZATION_TARGET_PERCENT, dashboard
from tests.support import REPO


def test_four_dashboards_with_unique_ids():
    assert [d.title for d in DASHBOARDS] == [
        "GPU cluster health", "Training progress", "Network performance", "Cost tracking"]
    for board in DASHBOARDS:
        ids = [p.id for p in board.panels]
        assert len(ids) == len(set(ids)), board.slug
        for panel in board.panels:
            assert panel.series and 1 <= panel.width <= 24
            # Every panel renders locally, so the local page always matches the other two.
            assert panel.has("local"), f"{board.slug}/{panel.id} has no local source"


def test_gpu_target_is_the_alarm_and_the_alert_rule_threshold():
    from ddlc.infra.alarms import GPU_UTILIZATION_THRESHOLD_PERCENT

    assert GPU_UTILIZATION_TARGET_PERCENT == GPU_UTILIZATION_THRESHOLD_PERCENT == 80
    rules = yaml.safe_load((REPO / "src/ddlc/monitor/rules/ddlc-alerts.yml").read_text())
    expr = next(r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == "DDLCGpuUnderutilized")
    assert f"< {GPU_UTILIZATION_TARGET_PERCENT / 100:g}" in expr
    utilization = dashboard("gpu-cluster-health").panel("gpu-utilization")
    assert [t.value for t in utilization.thresholds] == [80.0]


def test_every_unit_is_known_to_every_renderer():
    from ddlc.dashboards.cloudwatch import Y_AXIS_LABEL
    from ddlc.dashboards.grafana import GRAFANA_UNITS

    script = (REPO / "src/ddlc/dashboards/static/dashboard.js").read_text()
    js_units = set(re.findall(r"^  (\w+): \{", script, flags=re.M))
    used = {panel.unit for board in DASHBOARDS for panel in board.panels}
    assert used <= set(GRAFANA_UNITS) and used <= set(Y_AXIS_LABEL) and used <= js_units


def test_metric_names_in_queries_are_documented():
    documented = set(re.findall(r"`(ddlc_[a-z0-9_]+)`", (REPO / "docs/metrics.md").read_text()))
    for board in DASHBOARDS:
        for panel in board.panels:
            for series in panel.series:
                for name in re.findall(r"\bddlc_[a-z0-9_]+", series.promql or ""):
                    assert name in documented, f"{board.slug}/{panel.id}: {name} is not in docs/metrics.md"
