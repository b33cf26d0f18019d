"""Every series a CloudWatch panel reads from ddlc's namespace is published on the cluster (#17 item 6):

* the node agent's own series: the cluster starts it with `--cloudwatch`, and its publisher, run against moto,
  must put each such metric with the exact dimensions the panel's SEARCH names;
* the ranks' series: the CloudWatch agent's EMF processor (configured in the nodes' user data) must select each
  such metric, with those dimensions, from what the ranks really export (the agent itself cannot run here).
"""

from __future__ import annotations

import re
from pathlib import Path

import boto3
from moto import mock_aws

from ddlc.dashboards.definition import DASHBOARDS
from ddlc.infra.user_data import SCRAPE_JOB, cloudwatch_agent_config, render_user_data
from ddlc.monitor.agent import build_node_registry
from ddlc.monitor.cloudwatch import CloudWatchPublisher
from ddlc.monitor.training import TrainingMetrics
from tests.infra.test_user_data import boot_config
from tests.monitor.helpers import collected
from tests.monitor.test_cloudwatch import StepClock
from tests.monitor.test_docs import recorded_slurm
from tests.monitor.test_gpu import StandInNvml
from tests.monitor.test_network import make_efa_tree

_SEARCH = re.compile(r"\{DDLC,([A-Za-z_,]+)\} MetricName=\"([A-Za-z0-9_]+)\"")


def panel_series() -> set[tuple[str, frozenset]]:
    """(metric, dimension names) of every DDLC-namespace SEARCH in the CloudWatch queries of the dashboards."""
    found = set()
    for board in DASHBOARDS:
        for panel in board.panels:
            for series in panel.series:
                for dims, metric in _SEARCH.findall(series.cloudwatch or ""):
                    found.add((metric, frozenset(dims.split(","))))
    return found


def published_by_the_agent(tmp_path: Path) -> set[tuple[str, frozenset]]:
    make_efa_tree(tmp_path / "ib", "rdmap0", "1", {name: "1" for name in (
        "rx_bytes", "tx_bytes", "rx_pkts", "tx_pkts", "rx_drops", "rdma_read_bytes", "rdma_write_bytes",
        "rdma_read_resp_bytes", "rdma_write_recv_bytes")})
    registry, gpus = build_node_registry("node-a", tmp_path, tmp_path / "ib", nvml=StandInNvml())
    registry.register(recorded_slurm())  # the head node's agent: `--slurm-metrics`
    with mock_aws():
        client = boto3.client("cloudwatch", region_name="us-east-1")
        clock = StepClock()
        publisher = CloudWatchPublisher(registry, client, clock=clock)
        try:
            publisher.publish_once()
            clock.now += 60  # counters are sent as rates, from the second publish on
            publisher.publish_once()
        finally:
            gpus.close()
        pages = client.get_paginator("list_metrics").paginate(Namespace="DDLC")
        return {(m["MetricName"], frozenset(d["Name"] for d in m["Dimensions"])) for page in pages for m in page["Metrics"]}


def published_from_the_ranks() -> set[tuple[str, frozenset]]:
    ranks = [TrainingMetrics("r", rank=r, world_size=2, node="n", instance_type=None, num_nodes=1) for r in (0, 1)]
    for metrics in ranks:
        metrics.observe_step(1, 1.0, 1e-3, 1.0, 0.1, 10, 1, val_loss=1.1)  # a run with data.val_fraction
    labels: dict[str, set[str]] = {}
    for name, sample_labels in collected(*ranks):
        labels.setdefault(name, set()).update(key for key, _ in sample_labels)
    prometheus = cloudwatch_agent_config(boot_config())["logs"]["metrics_collected"]["prometheus"]
    published = set()
    for declaration in prometheus["emf_processor"]["metric_declaration"]:
        # Source labels' values joined with ";" (the checkpoint series: storage tier only, see user_data.py).
        joined = ";".join({"job": SCRAPE_JOB, "tier": "storage"}[label] for label in declaration["source_labels"])
        assert declaration["source_labels"][0] == "job" and re.fullmatch(declaration["label_matcher"], joined)
        for name, names_labels in labels.items():
            if any(re.fullmatch(selector, name) for selector in declaration["metric_selectors"]):
                for dims in declaration["dimensions"]:
                    if set(dims) <= names_labels | {"ClusterName"}:
                        published.add((name, frozenset(dims)))
    return published


def test_the_cluster_starts_the_agent_publishing_to_cloudwatch() -> None:
    (unit,) = [line for line in render_user_data(boot_config()) if "/usr/local/bin/ddlc agent" in line]
    assert "--cloudwatch" in unit.split() and "--region us-east-1" in unit
    # With Slurm, the head's agent (only) also exports the queue and node states.
    slurm = dict(scheduler="slurm", munge_secret_id="arn:aws:secretsmanager:us-east-1:1:secret:m")
    for role, expected in (("head", True), ("worker", False)):
        (unit,) = [line for line in render_user_data(boot_config(role=role, **slurm)) if "/usr/local/bin/ddlc agent" in line]
        assert ("--slurm-metrics" in unit.split()) is expected, role
    (unit,) = [line for line in render_user_data(boot_config(role="head")) if "/usr/local/bin/ddlc agent" in line]
    assert "--slurm-metrics" not in unit


def test_every_cloudwatch_panel_series_is_published(tmp_path: Path) -> None:
    wanted = panel_series()
    assert {("ddlc_train_loss", frozenset({"node", "rank", "run"})),
            ("ddlc_efa_rdma_bytes_total", frozenset({"device", "node", "port"})),
            ("ddlc_slurm_nodes", frozenset({"node", "state"}))} <= wanted
    missing = wanted - published_by_the_agent(tmp_path) - published_from_the_ranks()
    assert missing == set()
