"""Grafana export: JSON round-tripped through grafana-foundation-sdk's typed models, every PromQL expression
parsed by Prometheus' own promtool, a sane grid, and provisioning files Grafana reads."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from typer.testing import CliRunner

from ddlc.cli.main import app
from ddlc.dashboards.definition import DASHBOARDS
from ddlc.dashboards.grafana import DATASOURCE_UID
from ddlc.dashboards.prometheus import substitute_grafana_variables
from tests.monitor.helpers import prometheus_tool


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("grafana")
    result = CliRunner().invoke(app, ["dashboard", "export", "--grafana", str(out), "--prometheus-url", "http://prom:9090"])
    assert result.exit_code == 0, result.output
    return out


def _boards(exported):
    return {board.slug: json.loads((exported / "dashboards" / f"{board.slug}.json").read_text()) for board in DASHBOARDS}


def _missing_after_round_trip(original, back, path=""):
    """Keys or values we wrote that the SDK's typed model did not keep (the SDK may add its defaults)."""
    problems = []
    if isinstance(original, dict):
        for key, value in original.items():
            if not isinstance(back, dict) or key not in back:
                problems.append(f"{path}/{key} dropped")
            else:
                problems += _missing_after_round_trip(value, back[key], f"{path}/{key}")
    elif isinstance(original, list):
        if not isinstance(back, list) or len(back) != len(original):
            return [f"{path} list changed"]
        for index, (a, b) in enumerate(zip(original, back)):
            problems += _missing_after_round_trip(a, b, f"{path}[{index}]")
    elif original != back:
        problems.append(f"{path}: {original!r} became {back!r}")
    return problems


def test_round_trip_through_the_grafana_sdk(exported):
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import bargauge, prometheus, stat, timeseries
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()  # typed panel options and Prometheus queries instead of opaque dicts
    options_type = {"timeseries": timeseries.Options, "stat": stat.Options, "bargauge": bargauge.Options}
    for slug, data in _boards(exported).items():
        model = Dashboard.from_json(data)
        back = json.loads(json.dumps(model, cls=JSONEncoder))
        assert _missing_after_round_trip(data, back) == [], slug
        for panel in model.panels:
            assert isinstance(panel.options, options_type[panel.type_val]), (slug, panel.title)
            assert panel.targets and all(isinstance(t, prometheus.Dataquery) for t in panel.targets)


def test_panels_match_the_definition_and_tile_the_grid(exported):
    for board in DASHBOARDS:
        data = _boards(exported)[board.slug]
        assert data["uid"] == f"ddlc-{board.slug}" and board.title in data["title"]
        expected = [p.title for p in board.panels if p.has("promql")]
        assert [p["title"] for p in data["panels"]] == expected
        assert len({p["id"] for p in data["panels"]}) == len(data["panels"])
        cells = set()
        for panel in data["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24
            mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & mine, f"{board.slug}: {panel['title']} overlaps another panel"
            cells |= mine
    gpu = next(p for p in _boards(exported)["gpu-cluster-health"]["panels"] if p["title"] == "GPU utilization")
    steps = gpu["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps == [{"color": "orange", "value": None}, {"color": "green", "value": 80.0}]
    assert gpu["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"


def test_every_promql_expression_parses_in_prometheus(exported, tmp_path):
    promtool = prometheus_tool("promtool")
    rules = []
    for slug, data in _boards(exported).items():
        for panel in data["panels"]:
            for target in panel["targets"]:
                rules.append({"record": f"ddlc:check_{len(rules)}", "expr": substitute_grafana_variables(target["expr"], 3600, 15)})
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_provisioning_files(exported):
    provider = yaml.safe_load((exported / "provisioning/dashboards/ddlc.yaml").read_text())
    assert provider["apiVersion"] == 1
    assert provider["providers"][0]["options"]["path"] == str((exported / "dashboards").resolve())
    datasource = yaml.safe_load((exported / "provisioning/datasources/ddlc-prometheus.yaml").read_text())
    entry = datasource["datasources"][0]
    assert (entry["uid"], entry["type"], entry["url"]) == (DATASOURCE_UID, "prometheus", "http://prom:9090")
    # Panels pick the data source through the variable whose default is the provisioned one.
    variable = _boards(exported)["cost-tracking"]["templating"]["list"][0]
    assert variable["type"] == "datasource" and variable["current"]["value"] == DATASOURCE_UID
