"""`ddlc report utilization` from a real run (local store), and with a real Prometheus holding a week of GPU
utilization (backfilled with promtool) for the GPU-hours / target / idle node / worst offender sections."""

from __future__ import annotations

import math
import subprocess
import time
from xml.etree import ElementTree

import pytest

from typer.testing import CliRunner

from ddlc.cli.main import app
from ddlc.dashboards.cost import Pricing
from ddlc.dashboards.panel_data import PanelData
from ddlc.dashboards.prometheus import PrometheusClient
from ddlc.dashboards.report import collect, parse_since, write_report
from ddlc.errors import UserError
from ddlc.monitor.pricing import load_price_table
from tests.dashboards.conftest import PRICED_AS, RUN_NAME
from tests.monitor.helpers import PrometheusServer, prometheus_tool
from tests.support import PYTHON, REPO, run

SVG = "{http://www.w3.org/2000/svg}"


def svg_parts(path) -> dict:
    """What an SVG figure of the report shows: its title, axis labels, ticks, series (name -> points), legend
    entries and bars, parsed with xml.etree (a figure that is not well-formed XML fails here)."""
    root = ElementTree.parse(path).getroot()
    assert root.tag == f"{SVG}svg"

    def texts(cls: str) -> list[str]:
        return ["".join(e.itertext()) for e in root.iter(f"{SVG}text") if e.get("class") == cls]

    series = {}
    for element in root.iter(f"{SVG}path"):
        if element.get("class") == "series":
            numbers = element.get("d").replace("M", " ").replace("L", " ").split()
            assert len(numbers) == 2 * int(element.get("data-points"))  # x y per point
            series[element.find(f"{SVG}title").text] = int(element.get("data-points"))
    return {"title": texts("chart-title"), "x_label": texts("x-label"), "y_label": texts("y-label"),
            "x_ticks": texts("x-tick"), "y_ticks": texts("y-tick"), "series": series,
            "legend": ["".join(e.itertext()) for e in root.iter(f"{SVG}g") if e.get("class") == "legend-entry"],
            "bars": [e.find(f"{SVG}title").text for e in root.iter(f"{SVG}rect") if e.get("class") == "bar"],
            "bar_labels": texts("bar-label"), "elements": {e.tag.removeprefix(SVG) for e in root.iter()}}


def _ddlc(*args: str):
    return run([PYTHON, "-m", "ddlc", *args], cwd=REPO)


def test_markdown_report_from_the_run_store(runs_dir, artifacts):
    output = artifacts / "utilization.md"
    result = _ddlc("report", "utilization", "--since", "7d", "--runs-dir", str(runs_dir), "--run", RUN_NAME,
                   "--instance-type", PRICED_AS, "-o", str(output))
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert "# GPU utilization review" in text and RUN_NAME in text
    assert "No GPU utilization data exists for this window" in text  # a CPU run: said in words, not a fake 0%
    assert "| mean GPU utilization | no GPU utilization data |" in text
    for name in ("loss", "throughput", "cost"):
        assert f"(utilization_files/{name}.svg)" in text
    figures = {name: svg_parts(artifacts / "utilization_files" / f"{name}.svg") for name in ("loss", "throughput", "cost")}
    for name, y_label in (("loss", "training loss"), ("throughput", "tokens / s")):
        figure = figures[name]
        assert figure["series"] == {RUN_NAME: 20}, name  # every one of the run's 20 steps, one line
        assert figure["legend"] == [RUN_NAME] and figure["x_label"] == ["step"] and figure["y_label"] == [y_label]
        assert len(figure["x_ticks"]) >= 3 and len(figure["y_ticks"]) >= 3
    x_ticks = [float(t.replace(",", "")) for t in figures["loss"]["x_ticks"]]
    assert x_ticks == sorted(x_ticks) and all(1 <= t <= 20 for t in x_ticks)  # round steps within the run's
    assert figures["cost"]["title"] == ["cost by run"] and figures["cost"]["y_label"] == ["USD"]
    assert figures["cost"]["bar_labels"] == [RUN_NAME] and figures["cost"]["bars"][0].startswith(f"{RUN_NAME}: ")
    assert float(figures["cost"]["bars"][0].split(": ")[1]) > 0  # priced as a GPU instance


def test_html_report(runs_dir, tmp_path):
    report = collect(runs_dir, parse_since("7d"), Pricing(None, None, load_price_table()))
    write_report(report, tmp_path / "week.html")
    page = (tmp_path / "week.html").read_text()
    assert page.startswith("<!doctype html>") and '<img src="week_files/loss.svg"' in page
    series = svg_parts(tmp_path / "week_files" / "loss.svg")["series"]
    # One line per run in the store (the session's store also holds the local-dashboard tests' live run).
    assert series[RUN_NAME] == 20 and set(series) == {run.name for run in runs_dir.iterdir() if run.is_dir()}


def test_bad_input_is_one_line_and_exit_2(runs_dir, tmp_path):
    result = _ddlc("report", "utilization", "--runs-dir", str(runs_dir), "--since", "7days")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("--since: '7days' is not a duration such as 7d, 24h, 90m (units s, m, h, d, w)")
    for args, message in ((["--run", "ghost"], "--run: no run named ghost"),
                          (["-o", str(tmp_path / "r.pdf")], "must end in .md or .html"),
                          (["--instance-type", "x9.mega"], "no price")):
        outcome = CliRunner().invoke(app, ["report", "utilization", "--runs-dir", str(runs_dir), *args])
        assert isinstance(outcome.exception, UserError) and message in str(outcome.exception)


def test_parse_since():
    assert parse_since("7d") == 7 * 86400 and parse_since("90m") == 5400 and parse_since("2w") == 14 * 86400
    with pytest.raises(UserError):
        parse_since("0d")


# -- with Prometheus ---------------------------------------------------------------------------------------

HOURS = 6
BUSY_HOURS = 4  # gpu-a runs week-run for the first 4 of the 6 hours
NODE_TYPES = {"gpu-a": "p4d.24xlarge", "gpu-b": "g5.xlarge"}
BUSY, IDLE = 0.9, 0.02


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A real Prometheus whose TSDB holds 6 hours of GPU utilization: node gpu-a (2 GPUs at 90%) and node
    gpu-b (1 GPU at 2%), one sample a minute up to now, plus a run's cost counter."""
    promtool = prometheus_tool("promtool")
    binary = prometheus_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    end = int(time.time()) - 30
    lines = ["# TYPE ddlc_gpu_utilization_ratio gauge"]
    samples = range(end - HOURS * 3600, end + 1, 60)
    for node, gpus, value in (("gpu-a", 2, BUSY), ("gpu-b", 1, IDLE)):
        for gpu in range(gpus):
            lines += [f'ddlc_gpu_utilization_ratio{{node="{node}",gpu="{gpu}"}} {value} {t}' for t in samples]
    lines.append("# TYPE ddlc_cost_usd counter")
    lines += [f'ddlc_cost_usd_total{{run="week-run",instance_type="p4d.24xlarge"}} {(t - samples[0]) / 3600 * 32.7726:.4f} {t}'
              for t in samples]
    lines.append("# TYPE ddlc_run_cost_usd gauge")  # what rank 0 exports with the counter: the run's cost across resumes
    lines += [f'ddlc_run_cost_usd{{run="week-run",instance_type="p4d.24xlarge"}} {(t - samples[0]) / 3600 * 32.7726:.4f} {t}'
              for t in samples]
    # What `ddlc agent --instance-type` exports on both nodes, and a rank of week-run on gpu-a for the first
    # BUSY_HOURS: the idle cost counts gpu-a after that, and gpu-b all along.
    lines.append("# TYPE ddlc_node_price_usd_per_hour gauge")
    for node, instance_type in NODE_TYPES.items():
        price = load_price_table()[instance_type]
        lines += [f'ddlc_node_price_usd_per_hour{{node="{node}",instance_type="{instance_type}"}} {price} {t}'
                  for t in samples]
    lines.append("# TYPE ddlc_train_steps counter")
    lines += [f'ddlc_train_steps_total{{run="week-run",rank="0",node="gpu-a"}} {i} {t}'
              for i, t in enumerate(samples) if t < samples[0] + BUSY_HOURS * 3600]
    lines.append("# EOF")
    source = workdir / "backfill.om"
    source.write_text("\n".join(lines) + "\n")
    result = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(workdir / "tsdb")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    server = PrometheusServer(binary, workdir, {"global": {"scrape_interval": "15s"}, "scrape_configs": []})
    server.wait_for(lambda: server.query("ddlc_gpu_utilization_ratio"), "backfilled series to load")
    yield server
    server.stop()


def test_report_with_prometheus_gpu_data(prometheus, runs_dir, artifacts):
    client = PrometheusClient(prometheus.base)
    report = collect(runs_dir, parse_since("1d"), Pricing(PRICED_AS, None, load_price_table()), prometheus=client)
    by_node = {n.node: n for n in report.nodes}
    assert by_node["gpu-a"].mean_percent == pytest.approx(90.0, abs=0.01)
    assert by_node["gpu-b"].mean_percent == pytest.approx(2.0, abs=0.01)
    # 6 hours x 3 GPUs, sampled every query step: within one step of the truth.
    assert report.gpu_hours == pytest.approx(HOURS * 3, rel=0.05)
    assert report.mean_utilization == pytest.approx((2 * 90 + 2) / 3, abs=0.5)
    assert [n.node for n in report.idle_nodes] == ["gpu-b"]
    assert report.prometheus_cost["week-run"] == pytest.approx(HOURS * 32.7726, rel=0.01)
    path = write_report(report, artifacts / "utilization-prometheus.md")
    text = path.read_text()
    assert "meets" not in text and f"is below the 80% target" in text
    worst = text[text.index("## Worst offenders"):]
    assert worst.index("gpu-b") < worst.index("gpu-a")
    figure = svg_parts(artifacts / "utilization-prometheus_files" / "gpu_utilization.svg")
    assert set(figure["series"]) == {"gpu-a", "gpu-b", "80% target"} and figure["series"]["80% target"] == 2
    assert figure["series"]["gpu-a"] == len(by_node["gpu-a"].times) > 100  # every sample Prometheus returned
    assert figure["y_label"] == ["GPU utilization (%)"] and figure["x_label"] == ["time (UTC)"]
    assert figure["y_ticks"][0] == "0" and figure["y_ticks"][-1] == "100"
    assert all(len(tick) == len("12-01 06:00") for tick in figure["x_ticks"]) and len(figure["x_ticks"]) >= 3


def test_local_dashboard_reads_prometheus(prometheus, runs_dir):
    data = PanelData(runs_dir, Pricing(PRICED_AS, None, load_price_table()), prometheus=PrometheusClient(prometheus.base))
    panels = data.dashboard_data("gpu-cluster-health", RUN_NAME)["panels"]
    utilization = panels["gpu-utilization"]
    assert utilization["source"] == "prometheus"
    assert sorted(s["name"] for s in utilization["series"]) == ["gpu-a GPU 0", "gpu-a GPU 1", "gpu-b GPU 0"]
    values = [v for s in utilization["series"] if s["name"].startswith("gpu-a") for v in s["y"] if v is not None]
    assert values and all(math.isclose(v, 90.0) for v in values)
    # Panels Prometheus has nothing for still fall back to this machine (CPU, memory).
    assert panels["cpu-utilization"]["source"] == "local"


def test_empty_panel_says_what_prometheus_answered(prometheus, runs_dir):
    """With --prometheus, a panel without data names that Prometheus (never "no Prometheus URL was given");
    an unreachable one is named as such, with the reason."""
    from tests.support import free_port

    data = PanelData(runs_dir, Pricing(PRICED_AS, None, load_price_table()), prometheus=PrometheusClient(prometheus.base))
    temperature = data.dashboard_data("gpu-cluster-health", RUN_NAME)["panels"]["gpu-temperature"]  # not backfilled
    efa = data.dashboard_data("network-performance", RUN_NAME)["panels"]["efa-rdma"]
    for panel, what in ((temperature, "No GPU data"), (efa, "No EFA data")):
        assert panel["series"] == [] and panel["message"].startswith(what), panel["message"]
        assert "no Prometheus URL" not in panel["message"]
        assert f"Prometheus at {prometheus.base} has no series" in panel["message"]
    dead = f"http://127.0.0.1:{free_port()}"
    data = PanelData(runs_dir, Pricing(PRICED_AS, None, load_price_table()), prometheus=PrometheusClient(dead, timeout_s=2))
    message = data.dashboard_data("gpu-cluster-health", RUN_NAME)["panels"]["gpu-temperature"]["message"]
    assert "no Prometheus URL" not in message and f"cannot reach {dead}" in message, message



def _expected_idle_usd() -> dict[str, float]:
    """gpu-a idle after week-run's last sample, less the 5 minutes its series stays fresh; gpu-b all 6 hours."""
    table = load_price_table()
    return {"gpu-a": table[NODE_TYPES["gpu-a"]] * (HOURS - BUSY_HOURS - 5 / 60),
            "gpu-b": table[NODE_TYPES["gpu-b"]] * HOURS}


def test_idle_node_cost_in_the_report_and_the_panel(prometheus, runs_dir, artifacts):
    """The weekly review and the Cost tab count what nodes cost while no job ran on them (#17 idle cost)."""
    from ddlc.dashboards.definition import COST_TRACKING
    from ddlc.dashboards.prometheus import substitute_grafana_variables

    expected = _expected_idle_usd()
    report = collect(runs_dir, parse_since("1d"), Pricing(PRICED_AS, None, load_price_table()),
                     prometheus=PrometheusClient(prometheus.base))
    assert set(report.idle_cost) == set(expected)
    for node, usd in expected.items():  # sampled every 173 s over the day: within two samples
        assert report.idle_cost[node] == pytest.approx(usd, abs=2 * 173 / 3600 * load_price_table()[NODE_TYPES[node]])
    text = write_report(report, artifacts / "utilization-idle.md").read_text()
    assert "## Idle node cost" in text and "| gpu-a |" in text.split("## Idle node cost")[1]
    # The panel's own query, as Grafana runs it over the last 6 hours with every node.
    expr = substitute_grafana_variables(COST_TRACKING.panel("idle-node-cost").series[0].promql, HOURS * 3600, 60)
    (value,) = prometheus.query(expr)
    assert float(value["value"][1]) == pytest.approx(sum(expected.values()), abs=1.0)
    # Only gpu-b selected: its price x 6 hours.
    only_b = substitute_grafana_variables(COST_TRACKING.panel("idle-node-cost").series[0].promql, HOURS * 3600, 60,
                                          {"node": "gpu-b"})
    assert float(prometheus.query(only_b)[0]["value"][1]) == pytest.approx(expected["gpu-b"], abs=0.05)
