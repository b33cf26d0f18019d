"""The first Xid of a GPU alerts: the agent's counters exist from 0 for every GPU it watches, and what the agent
exports, scrape by scrape, drives the shipped rule and the GPU-errors panel in `promtool test rules`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from prometheus_client.core import Metric

from ddlc.dashboards.definition import GPU_CLUSTER_HEALTH
from ddlc.monitor.alert_rules import rules_text
from ddlc.monitor.gpu import XidCounts
from tests.monitor.helpers import collected
from tests.monitor.promtool_model import Recording, run_rule_test


class _Served:
    """What the agent serves of these counters (GpuCollector yields XidCounts.families the same way)."""

    def __init__(self, node: str, xids: XidCounts) -> None:
        self.node, self.xids = node, xids

    def collect(self) -> Iterator[Metric]:
        yield from self.xids.families(self.node)


def test_every_watched_gpu_has_its_xid_counter_from_zero() -> None:
    xids = XidCounts([str(i) for i in range(8)])
    samples = collected(_Served("n1", xids))
    counters = {dict(labels)["gpu"]: v for (name, labels), v in samples.items() if name == "ddlc_gpu_xid_errors_total"}
    assert counters == {str(i): 0 for i in range(8)}
    xids.record("3", 79)
    xids.record("3", 48)
    samples = collected(_Served("n1", xids))
    assert samples[("ddlc_gpu_xid_errors_total", frozenset({("node", "n1"), ("gpu", "3")}))] == 2
    assert samples[("ddlc_gpu_last_xid", frozenset({("node", "n1"), ("gpu", "3")}))] == 48
    assert samples[("ddlc_gpu_xid_errors_total", frozenset({("node", "n1"), ("gpu", "0")}))] == 0


def test_first_xid_fires_the_alert_and_shows_on_the_panel(promtool: str, tmp_path: Path) -> None:
    # The agent starts at minute 0 watching 8 GPUs (no ECC reporting: a GPU with ECC off exports no ECC series);
    # GPU 3 reports its first Xid at minute 10. Prometheus scrapes the agent once a minute.
    xids = XidCounts([str(i) for i in range(8)])
    agent = _Served("n1", xids)
    recording = Recording()
    for minute in range(31):
        if minute == 10:
            xids.record("3", 79)
        recording.scrape(minute, agent, job="ddlc-agent", instance="n1:9400")
    panel = GPU_CLUSTER_HEALTH.panel("gpu-errors").series[0].promql.replace("$node", ".*")  # Grafana's "All"
    fired = {"severity": "critical", "node": "n1", "gpu": "3", "job": "ddlc-agent", "instance": "n1:9400"}
    result = run_rule_test(
        promtool, tmp_path, rules_text(), recording,
        alert_tests=[
            {"eval_time": "5m", "alertname": "DDLCGpuHardwareErrors", "exp_alerts": []},
            {"eval_time": "15m", "alertname": "DDLCGpuHardwareErrors", "exp_alerts": [{
                "exp_labels": fired,
                "exp_annotations": {"summary": "GPU 3 on n1 reported Xid or uncorrected ECC errors"}}]},
            {"eval_time": "28m", "alertname": "DDLCGpuHardwareErrors", "exp_alerts": []},
        ],
        expr_tests=[  # a healthy node shows 0 (not "no data"), the first Xid shows as 1
            {"expr": f"round({panel})", "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 0}]},
            {"expr": f"round({panel})", "eval_time": "15m", "exp_samples": [{"labels": "{}", "value": 1}]},
        ],
    )
    assert result.returncode == 0, result.stdout + result.stderr
