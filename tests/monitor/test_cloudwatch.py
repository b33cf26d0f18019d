"""CloudWatch publishing through boto3: against moto in-process, and `ddlc agent` against a moto server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from ddlc.monitor.agent import Agent, AgentSettings, build_node_registry
from ddlc.monitor.cloudwatch import CloudWatchPublisher, unit_for
from ddlc.monitor.training import TrainingMetrics
from tests.monitor.helpers import free_port
from tests.monitor.test_agent import REPO_SRC
from tests.monitor.test_gpu import StandInNvml
from tests.monitor.test_network import make_efa_tree


class StepClock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc).timestamp() - 120

    def __call__(self) -> float:
        return self.now


def dims(metric: dict) -> dict[str, str]:
    return {d["Name"]: d["Value"] for d in metric["Dimensions"]}


def statistic(client, name: str, dimensions: dict[str, str], stat: str = "Maximum") -> float:
    now = datetime.now(timezone.utc)
    response = client.get_metric_statistics(
        Namespace="DDLC", MetricName=name, Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=now - timedelta(hours=1), EndTime=now + timedelta(minutes=5), Period=3600, Statistics=[stat],
    )
    points = response["Datapoints"]
    assert len(points) == 1, (name, dimensions, points)
    return points[0][stat]


@mock_aws
def test_node_metrics_reach_cloudwatch_with_prometheus_names(tmp_path: Path) -> None:
    client = boto3.client("cloudwatch", region_name="us-east-1")
    efa_root = tmp_path / "ib"
    make_efa_tree(efa_root, "rdmap0", "1", {"rx_bytes": "1000", "tx_bytes": "0"})
    registry, gpus = build_node_registry("node-a", tmp_path, efa_root, nvml=StandInNvml())
    clock = StepClock()
    publisher = CloudWatchPublisher(registry, client, clock=clock)
    try:
        first = publisher.publish_once()
        (efa_root / "rdmap0/ports/1/hw_counters/rx_bytes").write_text("31000")
        clock.now += 60
        second = publisher.publish_once()
    finally:
        gpus.close()
    assert 0 < first < second  # counters need two publishes to have a rate

    listed = client.get_paginator("list_metrics").paginate(Namespace="DDLC").build_full_result()["Metrics"]
    names = {m["MetricName"] for m in listed}
    assert {"ddlc_gpu_utilization_ratio", "ddlc_gpu_memory_used_bytes", "ddlc_gpu_memory_total_bytes",
            "ddlc_network_receive_bytes_total", "ddlc_network_transmit_bytes_total", "ddlc_memory_used_bytes",
            "ddlc_efa_receive_bytes_total"} <= names
    gpu_dims = [dims(m) for m in listed if m["MetricName"] == "ddlc_gpu_utilization_ratio"]
    assert {"node": "node-a", "gpu": "0"} in gpu_dims
    assert statistic(client, "ddlc_gpu_utilization_ratio", {"gpu": "0", "node": "node-a"}) == pytest.approx(0.87)
    # (31000 - 1000) bytes over 60 s
    efa = {"device": "rdmap0", "node": "node-a", "port": "1"}
    assert statistic(client, "ddlc_efa_receive_bytes_total", efa) == pytest.approx(500.0)
    net_dims = [dims(m) for m in listed if m["MetricName"] == "ddlc_network_receive_bytes_total"]
    assert {"node": "node-a", "device": "lo"} in net_dims


@mock_aws
def test_training_metrics_publish_and_nan_is_skipped() -> None:
    client = boto3.client("cloudwatch", region_name="us-east-1")
    metrics = TrainingMetrics("run-cw", rank=0, world_size=1, node="n1", instance_type=None, num_nodes=1)
    metrics.observe_step(5, float("nan"), 1e-3, 0.5, 0.2, 100, 2)
    publisher = CloudWatchPublisher(metrics.registry, client, clock=StepClock())  # a still clock: no counter rates
    data = publisher.build_metric_data()
    names = {d["MetricName"] for d in data}
    assert "ddlc_train_loss" not in names  # CloudWatch rejects NaN
    assert "ddlc_train_step_seconds" in names
    assert publisher.publish_once() == len(data)
    step = statistic(client, "ddlc_train_step_seconds", {"node": "n1", "rank": "0", "run": "run-cw"})
    assert step == pytest.approx(0.2)


@mock_aws
def test_agent_publishing_loop() -> None:
    client = boto3.client("cloudwatch", region_name="us-east-1")
    settings = AgentSettings(port=0, node="loop-node", cloudwatch=True, cloudwatch_interval_s=0.05)
    with Agent(settings, cloudwatch_client=client) as agent:
        assert agent.publisher is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listed = client.list_metrics(Namespace="DDLC", MetricName="ddlc_network_receive_bytes_total")["Metrics"]
            if listed:
                break
            time.sleep(0.05)
    assert any(dims(m).get("node") == "loop-node" for m in listed)


def test_units_follow_the_name_suffix() -> None:
    assert unit_for("ddlc_gpu_memory_used_bytes", False) == "Bytes"
    assert unit_for("ddlc_train_step_seconds", False) == "Seconds"
    assert unit_for("ddlc_gpu_utilization_ratio", False) == "None"
    assert unit_for("ddlc_network_receive_bytes_total", True) == "Bytes/Second"
    assert unit_for("ddlc_train_steps_total", True) == "Count/Second"


def test_cli_agent_publishes_to_cloudwatch_server(moto, tmp_path: Path) -> None:
    """The agent as its own process against the session's moto server (CloudWatch on 127.0.0.1), in a namespace
    of its own: the server is shared, so only this namespace's metrics are this test's."""
    moto_server = moto.url
    env = {**os.environ, "PYTHONPATH": f"{REPO_SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "ddlc", "agent", "--port", "0", "--node", "cw-node", "--cloudwatch",
         "--endpoint-url", moto_server, "--region", "us-east-1", "--interval", "0.2", "--namespace", "DDLC-cli"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    client = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=moto_server)
    try:
        assert agent.stdout.readline().startswith("ddlc agent serving")
        deadline = time.monotonic() + 20
        names: set[str] = set()
        while time.monotonic() < deadline and "ddlc_network_receive_bytes_total" not in names:
            metrics = client.get_paginator("list_metrics").paginate(Namespace="DDLC-cli").build_full_result()["Metrics"]
            names = {m["MetricName"] for m in metrics}
            time.sleep(0.2)
        assert {"ddlc_agent_info", "ddlc_cpu_utilization_ratio", "ddlc_network_receive_bytes_total"} <= names
        assert all(dims(m)["node"] == "cw-node" for m in metrics)
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_cli_agent_cloudwatch_without_region_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC), "AWS_CONFIG_FILE": os.devnull}
    result = subprocess.run([sys.executable, "-m", "ddlc", "agent", "--port", "0", "--cloudwatch"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: CloudWatch publishing needs an AWS region: pass --region or set AWS_REGION")


class _Counters:
    """A collector whose counter reads whatever the test sets (a process restart resets it to a small value)."""

    def __init__(self) -> None:
        self.value = 0.0

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("ddlc_train_steps", "steps", labels=["run"])
        family.add_metric(["r"], self.value)
        yield family


def test_a_counter_reset_skips_one_interval_then_rates_resume() -> None:
    """docs/metrics.md: counters are published as per-second rates; a counter reset skips one interval."""
    from prometheus_client import CollectorRegistry

    registry, counter, clock = CollectorRegistry(), _Counters(), StepClock()
    registry.register(counter)
    publisher = CloudWatchPublisher(registry, client=None, clock=clock)

    def rates(value: float) -> list[float]:
        counter.value = value
        clock.now += 60
        return [d["Value"] for d in publisher.build_metric_data() if d["MetricName"] == "ddlc_train_steps_total"]

    assert rates(100) == []  # first sight: no rate yet
    assert rates(160) == [pytest.approx(1.0)]  # 60 more in 60 s
    assert rates(10) == []  # the process restarted: no negative rate, nothing sent
    assert rates(130) == [pytest.approx(2.0)]  # rates resume from the reset value
    assert rates(130) == [0.0]


def test_a_failed_publish_is_logged_and_retried_at_the_next_interval(caplog: pytest.LogCaptureFixture) -> None:
    """docs/metrics.md: a failed publish is logged and retried at the next interval. CloudWatch is down (nothing
    listens on its port), then comes up on that port: the same publisher's later rounds reach it."""
    import logging

    from botocore.config import Config
    from prometheus_client import CollectorRegistry, Gauge

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=url, aws_access_key_id="testing",
                          aws_secret_access_key="testing",
                          config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1))
    registry = CollectorRegistry()
    Gauge("ddlc_test_value_ratio", "a gauge", registry=registry).set(0.25)
    publisher = CloudWatchPublisher(registry, client, namespace="DDLC-retry", interval_s=0.1)
    server = None
    caplog.set_level(logging.WARNING, logger="ddlc")
    publisher.start()
    try:
        deadline = time.monotonic() + 30
        while sum("CloudWatch publish failed" in r.getMessage() for r in caplog.records) < 2:
            assert time.monotonic() < deadline, "no failed publish was logged"
            time.sleep(0.05)
        # Its own server, not the session's: CloudWatch must be down first, then come up on the same port.
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reader = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=url, aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        listed: list = []
        deadline = time.monotonic() + 60
        while not listed:
            assert time.monotonic() < deadline, "the publisher never got through once CloudWatch was up"
            assert server.poll() is None, "moto server exited"
            try:
                listed = reader.list_metrics(Namespace="DDLC-retry")["Metrics"]
            except Exception:  # noqa: BLE001 (the server is still starting)
                pass
            time.sleep(0.1)
        assert publisher._thread is not None and publisher._thread.is_alive()  # the loop survived the failures
        assert {m["MetricName"] for m in listed} == {"ddlc_test_value_ratio"}
    finally:
        publisher.close()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
