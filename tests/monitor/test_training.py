"""TrainingMetrics: what one rank exposes, read over HTTP from its own endpoint."""

from __future__ import annotations

import math
import socket
import urllib.error
import urllib.request

import pytest

from ddlc.errors import UserError
from ddlc.monitor.training import TrainingMetrics, rank_metrics_port
from tests.monitor.helpers import collected, free_port, sample_names, scrape, value_of


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_steps_are_served_per_rank_over_http() -> None:
    with TrainingMetrics("run-a", rank=1, world_size=2, node="n1", instance_type=None, num_nodes=1, port=0) as metrics:
        assert metrics.port and metrics.port > 0
        before = scrape(metrics.url)
        assert value_of(before, "ddlc_train_steps_total", run="run-a", rank="1") == 0
        assert "ddlc_train_loss" not in sample_names(before)  # no made-up loss before the first step
        metrics.observe_step(step=10, loss=2.5, lr=3e-4, grad_norm=0.75, step_seconds=0.5, tokens=4096, samples=8)
        metrics.observe_step(step=11, loss=2.25, lr=2e-4, grad_norm=0.5, step_seconds=0.25, tokens=4096, samples=8)
        samples = scrape(metrics.url)
    labels = {"run": "run-a", "rank": "1", "node": "n1"}
    assert value_of(samples, "ddlc_train_loss", **labels) == 2.25
    assert value_of(samples, "ddlc_train_learning_rate", **labels) == 2e-4
    assert value_of(samples, "ddlc_train_grad_norm", **labels) == 0.5
    assert value_of(samples, "ddlc_train_step_seconds", **labels) == 0.25
    assert value_of(samples, "ddlc_train_tokens_per_second", **labels) == 4096 / 0.25
    assert value_of(samples, "ddlc_train_samples_per_second", **labels) == 8 / 0.25
    assert value_of(samples, "ddlc_train_step", **labels) == 11
    assert value_of(samples, "ddlc_train_steps_total", **labels) == 2
    assert value_of(samples, "ddlc_train_tokens_total", **labels) == 8192
    assert value_of(samples, "ddlc_train_step_time_seconds_total", **labels) == 0.75
    # job-level series belong to rank 0 only, so sums over ranks do not double-count
    assert not {"ddlc_cost_usd_total", "ddlc_train_world_size", "ddlc_checkpoint_rpo_seconds"} & sample_names(samples)


def test_close_frees_the_port() -> None:
    port = free_port()
    metrics = TrainingMetrics("r", rank=0, world_size=1, node="n1", instance_type=None, num_nodes=1, port=port)
    assert metrics.port == port
    metrics.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    again = TrainingMetrics("r", rank=0, world_size=1, node="n1", instance_type=None, num_nodes=1, port=port)
    again.close()


def test_port_in_use_is_a_user_error() -> None:
    with TrainingMetrics("r", rank=0, world_size=1, node="n", instance_type=None, num_nodes=1, port=0) as first:
        with pytest.raises(UserError, match=f"port 127.0.0.1:{first.port} is already in use"):
            TrainingMetrics("r", rank=1, world_size=2, node="n", instance_type=None, num_nodes=1, port=first.port)


def test_no_port_means_no_server_but_metrics_still_collected() -> None:
    metrics = TrainingMetrics("r", rank=0, world_size=1, node="n1", instance_type=None, num_nodes=1, port=None)
    assert metrics.port is None and metrics.url is None
    metrics.observe_step(1, float("nan"), 1e-3, float("inf"), 0.1, 10, 1)
    samples = collected(metrics)
    assert math.isnan(value_of(samples, "ddlc_train_loss", rank="0"))
    metrics.close()


def test_cost_grows_with_wall_time_nodes_and_price() -> None:
    clock = FakeClock()
    metrics = TrainingMetrics(
        "big", rank=0, world_size=16, node="n1", instance_type="p4d.24xlarge", num_nodes=2, clock=clock
    )
    assert value_of(collected(metrics), "ddlc_cost_usd_total", run="big") == 0.0
    clock.now += 1800
    samples = collected(metrics)
    hourly = metrics.hourly_usd
    assert hourly > 0
    assert value_of(samples, "ddlc_cost_usd_total", run="big", instance_type="p4d.24xlarge") == pytest.approx(hourly)
    assert value_of(samples, "ddlc_cost_usd_per_hour", run="big") == pytest.approx(2 * hourly)
    assert value_of(samples, "ddlc_train_world_size", run="big") == 16
    assert value_of(samples, "ddlc_train_nodes", run="big") == 2


def test_checkpoints_success_and_failure() -> None:
    metrics = TrainingMetrics("r", rank=0, world_size=1, node="n1", instance_type=None, num_nodes=1,
                              checkpoint_rpo_seconds=900)
    assert "ddlc_checkpoint_last_success_timestamp_seconds" not in sample_names(collected(metrics))
    metrics.observe_checkpoint(step=100, duration_s=4.5, ok=True, timestamp=1_700_000_000.0)
    metrics.observe_checkpoint(step=200, duration_s=9.0, ok=False, timestamp=1_700_000_600.0)
    samples = collected(metrics)
    assert value_of(samples, "ddlc_checkpoint_last_success_timestamp_seconds", run="r") == 1_700_000_000.0
    assert value_of(samples, "ddlc_checkpoint_last_duration_seconds", run="r") == 4.5
    assert value_of(samples, "ddlc_checkpoint_last_step", run="r") == 100
    assert value_of(samples, "ddlc_checkpoints_total", result="success") == 1
    assert value_of(samples, "ddlc_checkpoints_total", result="failure") == 1
    assert value_of(samples, "ddlc_checkpoint_rpo_seconds", run="r") == 900


def test_checkpoint_series_by_tier() -> None:
    """Storage, memory and peer saves are told apart by `tier`; rank 0 exports the counters of the job's tiers
    from 0; a node leader that only copies snapshots exports its peer series."""
    leader = TrainingMetrics("r", rank=2, world_size=4, node="n2", instance_type=None, num_nodes=2)
    assert "ddlc_checkpoints_total" not in sample_names(collected(leader))
    leader.observe_checkpoint(step=12, duration_s=0.2, ok=True, timestamp=50.0, tier="peer")
    samples = collected(leader)
    assert value_of(samples, "ddlc_checkpoint_last_step", tier="peer") == 12
    assert {dict(labels)["tier"] for name, labels in samples if name == "ddlc_checkpoints_total"} == {"peer"}

    zero = TrainingMetrics("r", rank=0, world_size=4, node="n0", instance_type=None, num_nodes=2,
                           checkpoint_tiers=("storage", "memory", "peer"))
    samples = collected(zero)
    assert {(dict(labels)["tier"], dict(labels)["result"]) for name, labels in samples
            if name == "ddlc_checkpoints_total"} == {(t, r) for t in ("storage", "memory", "peer")
                                                     for r in ("success", "failure")}
    zero.observe_checkpoint(step=20, duration_s=3.0, ok=True, timestamp=100.0)
    zero.observe_checkpoint(step=24, duration_s=0.1, ok=True, timestamp=110.0, tier="memory")
    zero.observe_checkpoint(step=28, duration_s=0.1, ok=False, timestamp=120.0, tier="memory")
    samples = collected(zero)
    assert value_of(samples, "ddlc_checkpoint_last_success_timestamp_seconds", tier="storage") == 100.0
    assert value_of(samples, "ddlc_checkpoint_last_success_timestamp_seconds", tier="memory") == 110.0
    assert value_of(samples, "ddlc_checkpoint_last_step", tier="memory") == 24
    assert value_of(samples, "ddlc_checkpoints_total", tier="memory", result="failure") == 1
    assert value_of(samples, "ddlc_checkpoints_total", tier="storage", result="failure") == 0
    with pytest.raises(UserError, match="not among"):
        TrainingMetrics("r", rank=0, world_size=1, node="n", instance_type=None, num_nodes=1,
                        checkpoint_tiers=("disk",))


def test_bad_arguments_are_user_errors() -> None:
    with pytest.raises(UserError, match="rank 2 is outside world size 2"):
        TrainingMetrics("r", rank=2, world_size=2, node="n", instance_type=None, num_nodes=1)
    with pytest.raises(UserError, match="'z1.tiny' has no price"):
        TrainingMetrics("r", rank=0, world_size=1, node="n", instance_type="z1.tiny", num_nodes=1)
    with pytest.raises(UserError, match="num_nodes"):
        TrainingMetrics("r", rank=0, world_size=1, node="n", instance_type=None, num_nodes=0)


def test_rank_ports() -> None:
    assert rank_metrics_port(9500, 3) == 9503
    assert rank_metrics_port(0, 3) == 0
    assert rank_metrics_port(None, 3) is None
    with pytest.raises(UserError, match="above 65535"):
        rank_metrics_port(65535, 1)


def test_unusable_host_is_a_user_error() -> None:
    with pytest.raises(UserError, match="metrics host 'no-such-host.invalid' does not resolve"):
        TrainingMetrics("r", rank=0, world_size=1, node="n", instance_type=None, num_nodes=1,
                        host="no-such-host.invalid", port=0)
    with pytest.raises(UserError, match="metrics host '192.0.2.1' is not an address of this machine"):
        TrainingMetrics("r", rank=0, world_size=1, node="n", instance_type=None, num_nodes=1, host="192.0.2.1", port=0)


def _ipv6_loopback_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback_usable(), reason="this machine has no IPv6 loopback")
def test_ipv6_loopback() -> None:
    with TrainingMetrics("r6", rank=0, world_size=1, node="n", instance_type=None, num_nodes=1, host="::1", port=0) as m:
        assert m.url == f"http://[::1]:{m.port}/metrics"
        assert value_of(scrape(m.url), "ddlc_train_steps_total", run="r6") == 0
