"""docs/metrics.md documents every metric the agent and the training endpoint export, and every alert."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ddlc.monitor.agent import build_node_registry
from ddlc.monitor.alert_rules import rules_text
from ddlc.monitor.node_health import HealthMonitor
from ddlc.monitor.slurm import SINFO, SQUEUE, SlurmCollector
from ddlc.ops.health import HealthResult
from ddlc.monitor.training import TrainingMetrics
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.monitor.test_gpu_dcgm import DcgmStandIn as StandInNvml  # every GPU query NVML has
from tests.monitor.test_network import make_efa_tree

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ISSUE_NAMES = {
    "ddlc_gpu_utilization_ratio", "ddlc_gpu_memory_used_bytes", "ddlc_gpu_memory_total_bytes",
    "ddlc_network_receive_bytes_total", "ddlc_network_transmit_bytes_total", "ddlc_train_loss",
    "ddlc_train_steps_total", "ddlc_train_tokens_per_second", "ddlc_train_step_seconds",
    "ddlc_checkpoint_last_success_timestamp_seconds", "ddlc_cost_usd_total",
}


def documented_names() -> set[str]:
    return set(re.findall(r"^\| `(ddlc_[a-z0-9_]+)` \|", DOC.read_text(), flags=re.MULTILINE))


def recorded_slurm() -> SlurmCollector:
    """The Slurm collector reading real squeue/sinfo output recorded by tests/monitor/test_slurm.py."""
    data = Path(__file__).parent / "data"
    outputs = {SQUEUE: (data / "slurm-squeue.txt").read_text(), SINFO: (data / "slurm-sinfo.txt").read_text()}
    return SlurmCollector("head", run=outputs.get)


def exported_families(tmp_path: Path) -> dict[str, str]:
    """Every exported sample name -> the type of its metric family (counter, gauge, info, ...)."""
    make_efa_tree(tmp_path / "ib", "efa0", "1", {name: "1" for name in (
        "rx_bytes", "tx_bytes", "rx_pkts", "tx_pkts", "rx_drops", "rdma_read_bytes", "rdma_write_bytes",
        "rdma_read_resp_bytes", "rdma_write_recv_bytes")})
    registry, gpus = build_node_registry("n", tmp_path, tmp_path / "ib", nvml=StandInNvml(), instance_type="g5.xlarge")
    metrics = TrainingMetrics("r", rank=0, world_size=1, node="n", instance_type=None, num_nodes=1)
    metrics.observe_step(1, 1.0, 1e-3, 1.0, 0.1, 10, 1, compute_seconds=0.05, tokens_seen=10, data_wait_seconds=0.01,
                         host_memory_peak_bytes=2**30, gpu_memory_peak_bytes=2**30, val_loss=1.1)
    metrics.observe_checkpoint(1, 0.1, True, 0.0)
    try:
        gpus.xids.record("0", 79)  # an Xid seen
        health = HealthMonitor("n", run=lambda: [HealthResult("gpus", True, "1 of 1 GPUs visible")])
        health.run_once()  # `ddlc agent --health-interval` registers this collector too
        # recorded_slurm(): `ddlc agent --slurm-metrics`
        families = [f for collector in (registry, metrics, health, recorded_slurm()) for f in _families(collector)]
    finally:
        gpus.close()
        metrics.close()
    return {s.name: f.type for f in families for s in f.samples if not s.name.endswith("_created")}


def _families(collector):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return list(text_string_to_metric_families(generate_latest(registry).decode()))


def exported_names(tmp_path: Path) -> set[str]:
    return set(exported_families(tmp_path))


def test_every_exported_metric_is_documented(tmp_path: Path) -> None:
    exported = exported_names(tmp_path)
    assert ISSUE_NAMES <= exported
    assert exported - documented_names() == set()
    assert documented_names() - exported == set()  # nothing documented that is never exported


def test_every_alert_is_documented() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(rules_text())["groups"] for r in g["rules"] if "alert" in r}
    table = set(re.findall(r"^\| `(DDLC[A-Za-z]+)` \|", DOC.read_text(), flags=re.MULTILINE))
    assert alerts == table


def test_names_follow_the_prometheus_conventions(tmp_path: Path) -> None:
    """docs/metrics.md: base units (bytes, seconds), `_ratio` for 0-1 fractions, `_total` for counters."""
    families = exported_families(tmp_path)
    for name, kind in families.items():
        assert name.endswith("_total") == (kind == "counter"), (name, kind)
        words = name.split("_")
        assert not set(words) & {"ms", "milliseconds", "kb", "mb", "gb", "kib", "mib", "gib", "percent", "pct",
                                 "minutes", "hours"}, name  # base units only
    fractions = {n for n in families if "utilization" in n or n.endswith("_ratio")}
    assert fractions and all(n.endswith("_ratio") for n in fractions), fractions
