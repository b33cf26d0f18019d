"""The EFA traffic panel shows one documented quantity in all three renderers (#17 item 8).

* Statically: each host-sourced series reads the same ddlc_* counter in PromQL, in its CloudWatch SEARCH and
  in the local dashboard (before the fix Prometheus summed read + write while the others read write only).
* With values: one EFA sysfs tree (two devices) changes at a known rate; promtool evaluates the panel's PromQL
  over what the agent's collector exported, the local sampler computes its rate, and the agent's CloudWatch
  publisher sends to moto. All three give (Δ rdma_read_bytes + Δ rdma_write_bytes) / Δt for "RDMA", and the
  port's tx_bytes / rx_bytes rates for "tx" / "rx".
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
from moto import mock_aws
from prometheus_client import CollectorRegistry

from ddlc.dashboards.definition import DASHBOARDS, dashboard
from ddlc.dashboards.sampler import HostSampler
from ddlc.monitor.cloudwatch import CloudWatchPublisher
from ddlc.monitor.network import NetworkCollector
from tests.monitor.helpers import prometheus_tool
from tests.monitor.promtool_model import Recording, run_rule_test
from tests.monitor.test_network import make_efa_tree

_NAMES = re.compile(r"\bddlc_[a-z0-9_]+")
_DDLC_SEARCH = re.compile(r"\{DDLC,[A-Za-z_,]+\} MetricName=\"([a-z0-9_]+)\"")

# Per minute, per device: how much each hw counter grows (multiples of 60, so rates are whole numbers).
GROWTH = {
    "rdmap0": {"rdma_read_bytes": 600_000, "rdma_write_bytes": 6_000, "tx_bytes": 120_000, "rx_bytes": 180_000},
    "rdmap1": {"rdma_read_bytes": 60_000, "rdma_write_bytes": 0, "tx_bytes": 6_000, "rx_bytes": 60},
}
START = 1_000_000
EXPECTED = {  # bytes per second per (legend suffix, device)
    (legend, device): sum(growth[c] for c in counters) / 60
    for device, growth in GROWTH.items()
    for legend, counters in (("RDMA", ("rdma_read_bytes", "rdma_write_bytes")), ("tx", ("tx_bytes",)),
                             ("rx", ("rx_bytes",)))
}


def test_each_renderer_reads_the_same_counters():
    checked = 0
    for board in DASHBOARDS:
        for panel in board.panels:
            for series in panel.series:
                if not (series.local and series.local.kind == "host" and series.promql and series.cloudwatch):
                    continue
                searched = set(_DDLC_SEARCH.findall(series.cloudwatch))
                if not searched:
                    continue  # the CloudWatch agent's own metrics (nvidia_smi_*, net_*): other names by nature
                local = {series.local.key} | ({series.local.divide_by} if series.local.divide_by else set())
                promql = set(_NAMES.findall(series.promql))
                assert promql == searched == local, (board.slug, panel.id, series.label, promql, searched, local)
                checked += 1
    assert checked >= 4  # RDMA, tx, rx, drops
    efa = dashboard("network-performance").panel("efa-rdma")
    assert [s.label.split()[-1] for s in efa.series] == ["RDMA", "tx", "rx"]
    assert "rdma_read_bytes + rdma_write_bytes" in efa.description


def _tree(root: Path, minute: int) -> None:
    for device, growth in GROWTH.items():
        directory = root / device / "ports" / "1" / "hw_counters"
        if not directory.exists():
            make_efa_tree(root, device, "1", {})
        for counter, per_minute in growth.items():  # atomically: a reader never sees a half-written number
            partial = directory.parent / f".{counter}.tmp"
            partial.write_text(f"{START + per_minute * minute}\n")
            partial.replace(directory / counter)


def _legend(label: str) -> str:
    return label.split()[-1]


def test_promql_local_and_cloudwatch_agree(tmp_path: Path):
    panel = dashboard("network-performance").panel("efa-rdma")
    root = tmp_path / "ib"

    # Prometheus: promtool over what the collector exported, one scrape a minute.
    recording = Recording()
    collector = NetworkCollector("n1", infiniband_root=root)
    for minute in range(4):
        _tree(root, minute)
        recording.scrape(minute, collector, job="ddlc-agent", instance="n1:9400")
    expr_tests = [{
        "expr": series.promql.replace("$__rate_interval", "2m").replace("$node", ".*"), "eval_time": "3m",
        "exp_samples": [{"labels": f'{{device="{device}", node="n1"}}', "value": EXPECTED[(_legend(series.label), device)]}
                        for device in sorted(GROWTH)],
    } for series in panel.series]
    result = run_rule_test(prometheus_tool("promtool"), tmp_path, "groups: []\n", recording, expr_tests=expr_tests)
    assert result.returncode == 0, result.stdout + result.stderr

    # The local dashboard: the sampler's rate between two samples a minute apart.
    _tree(root, 0)
    now = [0.0]
    sampler = HostSampler(node="n1", infiniband_root=root, clock=lambda: now[0])
    try:
        sampler.sample_once()
        _tree(root, 1)
        now[0] = 60.0
        sampler.sample_once()
        for series in panel.series:
            got = {device: values[-1] for device, _, values in sampler.series(series.local)}
            assert got == {d: EXPECTED[(_legend(series.label), d)] for d in GROWTH}, series.label
    finally:
        sampler.close()

    # CloudWatch: the agent's publisher against moto; the panel's SEARCH names the metric it reads.
    _tree(root, 0)
    with mock_aws():
        client = boto3.client("cloudwatch", region_name="us-east-1")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(NetworkCollector("n1", infiniband_root=root))
        clock_now = [datetime.now(timezone.utc).timestamp() - 120]
        publisher = CloudWatchPublisher(registry, client, clock=lambda: clock_now[0])
        publisher.publish_once()
        _tree(root, 1)
        clock_now[0] += 60
        publisher.publish_once()
        end = datetime.now(timezone.utc)
        for series in panel.series:
            (metric,) = _DDLC_SEARCH.findall(series.cloudwatch)
            for device in GROWTH:
                points = client.get_metric_statistics(
                    Namespace="DDLC", MetricName=metric, StartTime=end - timedelta(hours=1),
                    EndTime=end + timedelta(minutes=5), Period=3600, Statistics=["Average"],
                    Dimensions=[{"Name": "device", "Value": device}, {"Name": "node", "Value": "n1"},
                                {"Name": "port", "Value": "1"}],
                )["Datapoints"]
                assert [p["Average"] for p in points] == [EXPECTED[(_legend(series.label), device)]], (metric, device)


def test_rdma_bytes_left_out_when_a_part_is_unreadable(tmp_path: Path):
    """A sum missing one part would drop and look like a counter reset: no RDMA sample then."""
    from tests.monitor.helpers import collected

    make_efa_tree(tmp_path, "rdmap0", "1", {"rdma_read_bytes": "10", "rdma_write_bytes": "oops", "tx_bytes": "5"})
    make_efa_tree(tmp_path, "rdmap1", "1", {"rdma_read_bytes": "10", "rdma_write_bytes": "32"})
    samples = collected(NetworkCollector("n1", infiniband_root=tmp_path))
    rdma = {dict(labels)["device"]: v for (name, labels), v in samples.items() if name == "ddlc_efa_rdma_bytes_total"}
    assert rdma == {"rdmap1": 42}


def test_rdma_bytes_on_a_device_without_rdma_write(tmp_path: Path):
    """A device or driver without RDMA write has no rdma_write_bytes file: RDMA bytes are its reads (NCCL on p4d
    reads), not a series that never appears."""
    from tests.monitor.helpers import collected

    make_efa_tree(tmp_path, "rdmap0", "1", {"rdma_read_bytes": "4096", "tx_bytes": "5"})
    samples = collected(NetworkCollector("n1", infiniband_root=tmp_path))
    key = ("ddlc_efa_rdma_bytes_total", frozenset({("node", "n1"), ("device", "rdmap0"), ("port", "1")}))
    assert samples[key] == 4096
