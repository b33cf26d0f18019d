"""Cost figures of a real run against the price table, written out by hand."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from ddlc.dashboards.cost import Pricing, cost_by_node, cost_series, idle_gpu_hours, run_cost
from ddlc.dashboards.runs import load_run
from ddlc.errors import UserError
from ddlc.monitor.pricing import load_price_table
from tests.dashboards.conftest import PRICED_AS

TABLE = load_price_table()


def test_cost_of_a_finished_run(run_dir, tmp_path):
    run = load_run(run_dir)
    assert run.finished and run.readable and run.num_steps == 20
    cost = run_cost(run, Pricing(PRICED_AS, None, TABLE))
    times, durations = run.column("time"), run.column("step_time_s")
    wall_hours = (times[-1] - (times[0] - durations[0])) / 3600
    expected = TABLE[PRICED_AS] * wall_hours
    assert cost.usd_total == pytest.approx(expected) and cost.usd_total > 0
    assert cost.usd_per_step == pytest.approx(expected / 20)
    assert cost.usd_per_1m_tokens == pytest.approx(expected / run.last("tokens_seen") * 1e6)
    assert cost.usd_per_epoch == pytest.approx(expected / run.last("epoch"))
    assert cost.projected_usd == pytest.approx(expected)  # finished: nothing left to spend
    # Two nodes (recorded by the run) cost twice as much, split evenly by node.
    copy = tmp_path / "two-nodes"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**summary, "num_nodes": 2}))
    doubled = run_cost(load_run(copy), Pricing(PRICED_AS, None, TABLE))
    assert doubled.usd_total == pytest.approx(2 * expected)
    by_node = cost_by_node([doubled])
    assert len(by_node) == 2 and sum(by_node.values()) == pytest.approx(2 * expected)


def test_cost_series_rises_to_the_total(run_dir):
    run = load_run(run_dir)
    times, totals = cost_series(run, Pricing(PRICED_AS, None, TABLE))["usd_total"]
    assert times == list(run.column("time"))
    assert totals == sorted(totals) and totals[-1] == pytest.approx(run_cost(run, Pricing(PRICED_AS, None, TABLE)).usd_total)


def test_projection_for_an_unfinished_run(run_dir, tmp_path):
    # The same steps, but the run was meant to go to step 100 and has not written its summary yet.
    copy = tmp_path / "going"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    (copy / "summary.json").unlink()
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["training"]["max_steps"] = 100
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    run = load_run(copy)
    cost = run_cost(run, Pricing(PRICED_AS, None, TABLE))
    recent = list(run.column("step_time_s")[-20:])
    expected_rest = 80 * (sum(recent) / len(recent)) * TABLE[PRICED_AS] / 3600
    assert cost.projected_usd == pytest.approx(cost.usd_total + expected_rest)


def test_instance_type_from_the_summary_wins(run_dir, tmp_path):
    copy = tmp_path / "p5"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**summary, "instance_type": "p5.48xlarge", "num_nodes": 4}))
    cost = run_cost(load_run(copy), Pricing(PRICED_AS, None, TABLE))
    assert (cost.instance_type, cost.num_nodes, cost.hourly_usd) == ("p5.48xlarge", 4, 4 * TABLE["p5.48xlarge"])


def test_unknown_instance_type_is_a_user_error(run_dir):
    with pytest.raises(UserError, match="no price"):
        run_cost(load_run(run_dir), Pricing("x9.mega", None, TABLE))


def test_idle_gpu_hours():
    assert idle_gpu_hours({}) is None  # no GPU at all: "no data", not zero
    samples = {"0": [(0.0, 0.0), (3600.0, 90.0), (7200.0, 1.0), (10800.0, 50.0)], "1": [(0.0, 95.0), (3600.0, 95.0)]}
    assert idle_gpu_hours(samples) == pytest.approx(2.0)


def test_nodes_precedence_is_what_the_docs_say(run_dir, tmp_path):
    """docs/dashboards.md: nodes from summary.json's `num_nodes`, else `--nodes`, else 1 (like the instance type:
    what the run recorded wins, the option fills in). Checked through `ddlc report utilization --nodes`."""
    from typer.testing import CliRunner

    from ddlc.cli.main import app
    from tests.support import REPO

    docs = " ".join((REPO / "docs/dashboards.md").read_text().split())
    assert "nodes from summary.json's `num_nodes`, else `--nodes`, else 1" in docs
    runs = tmp_path / "runs"
    recorded, unrecorded = runs / "recorded", runs / "unrecorded"
    for copy, nodes in ((recorded, 2), (unrecorded, None)):
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
        summary = json.loads((copy / "summary.json").read_text())
        summary.pop("num_nodes", None)
        if nodes is not None:
            summary["num_nodes"] = nodes
        (copy / "summary.json").write_text(json.dumps(summary))

    def nodes_in_report(*options: str) -> dict[str, str]:
        out = tmp_path / f"report{len(options)}.md"
        result = CliRunner().invoke(app, ["report", "utilization", "--since", "30d", "--runs-dir", str(runs),
                                          "--instance-type", PRICED_AS, "-o", str(out), *options])
        assert result.exit_code == 0, result.output
        rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| recorded ")
                or line.startswith("| unrecorded ")]
        return {row[1].strip(): row[7].strip() for row in rows}

    assert nodes_in_report("--nodes", "4") == {"recorded": "2", "unrecorded": "4"}
    assert nodes_in_report() == {"recorded": "2", "unrecorded": "1"}


def test_idle_cost_counts_uncovered_time_once():
    from ddlc.dashboards.cost import idle_cost_usd

    assert idle_cost_usd(0, 3600, [], 10.0) == pytest.approx(10.0)
    # Busy 600-1800 and 1200-2400 (overlapping: 1800 s together) and -100-300 (clipped: 300 s): idle 1500 s.
    assert idle_cost_usd(0, 3600, [(600, 1800), (1200, 2400), (-100, 300)], 36.0) == pytest.approx(15.0)
    assert idle_cost_usd(0, 3600, [(0, 5000)], 36.0) == 0.0 and idle_cost_usd(10, 5, [], 1.0) == 0.0


def test_local_idle_cost_is_this_machine_outside_its_runs(run_dir, tmp_path):
    """The Cost tab without Prometheus: since the dashboard started sampling, the time no run of the store was
    going on this machine, priced as --instance-type."""
    import time

    from ddlc.dashboards.panel_data import PanelData
    from ddlc.dashboards.sampler import HostSampler

    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / run_dir.name, ignore=shutil.ignore_patterns("checkpoints"))
    run = load_run(runs / run_dir.name)
    started = run.start_time - 1800  # the dashboard began sampling half an hour before the run
    sampler = HostSampler(clock=lambda: started)
    try:
        data = PanelData(runs, Pricing(PRICED_AS, None, TABLE), sampler=sampler)
        before = time.time()
        idle = data.dashboard_data("cost-tracking", None)["panels"]["idle-node-cost"]
        after = time.time()
    finally:
        sampler.close()
    (series,) = idle["series"]
    busy = run.end_time - run.start_time
    low, high = ((t - started - busy) * TABLE[PRICED_AS] / 3600 for t in (before, after))
    assert low <= series["y"][-1] <= high


def test_local_idle_cost_without_a_price_leaves_the_tab_working(run_dir, tmp_path):
    from ddlc.dashboards.panel_data import PanelData
    from ddlc.dashboards.sampler import HostSampler

    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / run_dir.name, ignore=shutil.ignore_patterns("checkpoints"))
    sampler = HostSampler()
    try:  # built by a script with a type the table lacks (the CLI refuses it up front)
        panels = PanelData(runs, Pricing("x9.mega", None, TABLE), sampler=sampler).dashboard_data(
            "cost-tracking", None)["panels"]
    finally:
        sampler.close()
    assert panels["idle-node-cost"]["series"] == [] and panels["idle-node-cost"]["message"]
