"""Grafana export: JSON round-tripped through grafana-foundation-sdk's typed models, every PromQL expression
parsed by Prometheus' own promtool, a sane grid, and provisioning files Grafana reads."""

from __future__ import annotations

import json
import subprocess
import time

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


@pytest.fixture(scope="module")
def two_nodes_two_runs(tmp_path_factory):
    """A real Prometheus scraping two node agents (GPUs through a stand-in NVML, EFA trees) and two runs' rank 0,
    one run per node, every second."""
    import threading

    from ddlc.monitor.agent import Agent, AgentSettings
    from ddlc.monitor.training import TrainingMetrics
    from tests.monitor.helpers import PrometheusServer
    from tests.monitor.test_gpu import StandInNvml
    from tests.monitor.test_network import make_efa_tree

    workdir = tmp_path_factory.mktemp("variables")
    agents, ranks = [], []
    stop = threading.Event()
    server = None
    try:
        for node, run in (("node-a", "run-a"), ("node-b", "run-b")):
            make_efa_tree(workdir / node, "rdmap0", "1", {"rx_bytes": "1", "tx_bytes": "1", "rx_drops": "0",
                                                          "rdma_read_bytes": "1", "rdma_write_bytes": "1"})
            agents.append(Agent(AgentSettings(port=0, node=node, infiniband_root=workdir / node), nvml=StandInNvml()))
            ranks.append(TrainingMetrics(run, rank=0, world_size=1, node=node, instance_type="p4d.24xlarge",
                                         num_nodes=1, port=0))

        def loop():
            step = 0
            while not stop.wait(0.1):
                step += 1
                for metrics in ranks:
                    metrics.observe_step(step, 1.0, 1e-3, 1.0, 0.1, 100, 1, compute_seconds=0.05, tokens_seen=100 * step)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        targets = lambda objs: [o.url.split("//")[1].split("/")[0] for o in objs]  # noqa: E731
        config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [
            {"job_name": "ddlc-agent", "honor_labels": True, "static_configs": [{"targets": targets(agents)}]},
            {"job_name": "ddlc-train", "honor_labels": True, "static_configs": [{"targets": targets(ranks)}]}]}
        server = PrometheusServer(prometheus_tool("prometheus"), workdir, config)
        # Three scrapes of every target, so rates exist.
        server.wait_for(lambda: len(server.query("count_over_time(up[1m]) >= 3")) == 4, "three scrapes of each target",
                        timeout=60)
        yield server
    finally:
        stop.set()
        if server is not None:
            server.stop()
        for thing in agents + ranks:
            thing.close()


def test_node_and_run_variables_filter_every_panel(exported, two_nodes_two_runs):
    """Grafana puts the selection in place of $node / $run; "All" is `.*`. With node-a and run-a selected, no
    panel query returns node-b's or run-b's series, and with All both appear."""
    server = two_nodes_two_runs
    narrowed = 0
    for slug, data in _boards(exported).items():
        names = {v["name"] for v in data["templating"]["list"]}
        for panel in data["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for name in ("node", "run"):
                    assert (f"${name}" in expr) <= (name in names), (slug, panel["title"], name)
                every = server.query(substitute_grafana_variables(expr, 60, 15))
                chosen = server.query(substitute_grafana_variables(expr, 60, 15, {"node": "node-a", "run": "run-a"}))
                for series in chosen:
                    assert series["metric"].get("node", "node-a") == "node-a", (slug, panel["title"], series)
                    assert series["metric"].get("run", "run-a") == "run-a", (slug, panel["title"], series)
                if any(s["metric"].get("node") == "node-b" or s["metric"].get("run") == "run-b" for s in every):
                    assert chosen, (slug, panel["title"], "the selection left nothing")
                    narrowed += 1
    assert narrowed >= 20
    # The variables' own queries list both nodes and both runs (Grafana's label_values(selector, label)).
    gpu = _boards(exported)["gpu-cluster-health"]["templating"]["list"]
    cost = _boards(exported)["cost-tracking"]["templating"]["list"]
    for variable, label, expected in ((gpu[1], "node", {"node-a", "node-b"}), (cost[-1], "run", {"run-a", "run-b"})):
        assert variable["name"] == label and variable["allValue"] == ".*" and variable["multi"]
        selector = variable["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0]
        series = server.api("series", **{"match[]": selector, "start": str(time.time() - 300)})
        assert {s[label] for s in series if label in s} == expected
