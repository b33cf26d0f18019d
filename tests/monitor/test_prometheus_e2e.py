"""A real Prometheus (Debian `prometheus`) on 127.0.0.1 scrapes a running agent and two training ranks,
evaluates the shipped rules, and answers queries over its HTTP API."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from ddlc.monitor.agent import Agent, AgentSettings
from ddlc.monitor.alert_rules import write_rules
from ddlc.errors import UserError
from ddlc.monitor.prometheus_config import HostEntry, build_prometheus_config, parse_hostfile
from ddlc.monitor.training import TrainingMetrics, rank_metrics_port
from tests.monitor.helpers import PrometheusServer, free_port

RUN = "e2e"


class TwoRankLoop:
    """Stands in for the train loop of a 2-rank job on one node: each local rank serves on base port + local rank,
    as the runtime does; both report steps; rank 1 is twice as slow."""

    def __init__(self, base_port: int) -> None:
        self.base_port = base_port
        common = dict(run=RUN, world_size=2, node="node-a", instance_type="p3.2xlarge", num_nodes=1)
        # A 1 s recovery point objective, so the checkpoint alert must fire while the test runs.
        self.ranks = [TrainingMetrics(rank=0, port=rank_metrics_port(base_port, 0), checkpoint_rpo_seconds=1, **common)]
        try:
            self.ranks.append(TrainingMetrics(rank=1, port=rank_metrics_port(base_port, 1), **common))
        except UserError:
            self.ranks[0].close()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        step = 0
        while not self._stop.wait(0.02):
            step += 1
            for rank, metrics in enumerate(self.ranks):
                loss = 4.0 / math.sqrt(step)
                metrics.observe_step(step, loss, 1e-3, 0.5, 0.1 * (rank + 1), tokens=2048, samples=4)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for metrics in self.ranks:
            metrics.close()


@pytest.fixture(scope="module")
def stack(prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, Agent, TwoRankLoop]]:
    workdir = tmp_path_factory.mktemp("prometheus")
    agent = Agent(AgentSettings(port=0, node="node-a", checkpoint_path=workdir))
    for attempt in range(5):  # two consecutive free ports; another process may hold base + 1
        try:
            loop = TwoRankLoop(free_port())
            break
        except UserError:
            if attempt == 4:
                raise
    write_rules(workdir)
    # The config `ddlc monitor prometheus-config` writes for a hostfile line `127.0.0.1 slots=2`.
    config = build_prometheus_config(
        parse_hostfile_text(workdir, "127.0.0.1 slots=2\n"), agent_port=agent.port, train_port=loop.base_port,
        scrape_interval="1s", rule_files=["ddlc-alerts.yml"],
    )
    server = PrometheusServer(prometheus_binary, workdir, config)
    try:
        server.wait_for(lambda: len(server.query('up == 1')) == 3, "all three targets up")
        yield server, agent, loop
    finally:
        server.stop()
        loop.close()
        agent.close()


def parse_hostfile_text(directory: Path, text: str) -> list[HostEntry]:
    hostfile = directory / "hostfile"
    hostfile.write_text(text)
    return parse_hostfile(hostfile)


AGENT_METRICS = [
    "ddlc_agent_info", "ddlc_gpus", "ddlc_network_receive_bytes_total", "ddlc_network_transmit_bytes_total",
    "ddlc_cpu_utilization_ratio", "ddlc_memory_used_bytes", "ddlc_disk_free_bytes",
]
TRAIN_METRICS = [
    "ddlc_train_loss", "ddlc_train_steps_total", "ddlc_train_tokens_per_second", "ddlc_train_step_seconds",
    "ddlc_train_learning_rate", "ddlc_train_grad_norm", "ddlc_cost_usd_total", "ddlc_checkpoint_rpo_seconds",
]


def test_prometheus_has_agent_metrics(stack) -> None:
    server, _, _ = stack
    targets = server.api("targets")["activeTargets"]
    assert sorted((t["labels"]["job"], t["health"]) for t in targets) == [
        ("ddlc-agent", "up"), ("ddlc-train", "up"), ("ddlc-train", "up")]
    for name in AGENT_METRICS:
        result = server.query(name)
        assert result, name
        assert all(series["metric"]["node"] == "node-a" for series in result), result
    lo = server.query('ddlc_network_receive_bytes_total{device="lo"}')
    assert float(lo[0]["value"][1]) > 0


def test_prometheus_has_training_metrics_per_rank(stack) -> None:
    server, _, _ = stack
    for name in TRAIN_METRICS:
        assert server.query(name), name
    step_time = {s["metric"]["rank"]: float(s["value"][1]) for s in server.query(f'ddlc_train_step_seconds{{run="{RUN}"}}')}
    assert step_time == {"0": pytest.approx(0.1), "1": pytest.approx(0.2)}
    job_tokens = server.query(f'sum by (run) (ddlc_train_tokens_per_second{{run="{RUN}"}})')
    assert float(job_tokens[0]["value"][1]) == pytest.approx(2048 / 0.1 + 2048 / 0.2)
    cost = server.query("ddlc_cost_usd_total")  # rank 0 only: one series per run
    assert len(cost) == 1 and cost[0]["metric"]["instance_type"] == "p3.2xlarge"
    assert float(cost[0]["value"][1]) > 0
    server.wait_for(lambda: server.query(f'rate(ddlc_train_steps_total{{run="{RUN}"}}[5s]) > 0'), "steps advancing")


def test_rules_load_and_evaluate(stack) -> None:
    server, _, _ = stack
    groups = server.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 18  # alerts and recording rules of ddlc-alerts.yml
    server.wait_for(lambda: all(r.get("lastEvaluation", "").startswith("20") for r in
                                 (rule for g in server.api("rules")["groups"] for rule in g["rules"])), "rules evaluated")
    unhealthy = [r["name"] for g in server.api("rules")["groups"] for r in g["rules"] if r["health"] != "ok"]
    assert unhealthy == []


def test_checkpoint_alert_fires_on_live_data(stack) -> None:
    server, _, loop = stack

    def firing() -> list[dict]:
        return [a for a in server.api("alerts")["alerts"]
                if a["labels"]["alertname"] == "DDLCCheckpointOverdue" and a["state"] == "firing"]

    alerts = server.wait_for(firing, "DDLCCheckpointOverdue to fire")
    assert alerts[0]["labels"]["run"] == RUN
    # A checkpoint clears it (stamped an hour ahead so the 1 s objective stays met for the rest of the test).
    loop.ranks[0].observe_checkpoint(step=1, duration_s=0.5, ok=True, timestamp=time.time() + 3600)
    server.wait_for(lambda: not firing(), "DDLCCheckpointOverdue to resolve")
    last = server.query(f'ddlc_checkpoint_last_success_timestamp_seconds{{run="{RUN}"}}')
    assert float(last[0]["value"][1]) > time.time()
