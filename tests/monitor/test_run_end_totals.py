"""Totals stay right at the end of a run (#17 item 3): the rank endpoint lingers after the last step so a real
Prometheus scrapes it, and throughput / cost per token come from the token counters, not the last-step gauge."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

from ddlc.dashboards.definition import COST_TRACKING, TRAINING_PROGRESS
from ddlc.dashboards.prometheus import substitute_grafana_variables
from ddlc.monitor.alert_rules import rules_text
from ddlc.monitor.prometheus_config import HostEntry, build_prometheus_config
from ddlc.monitor.training import TrainingMetrics
from tests.monitor.helpers import PrometheusServer
from tests.monitor.promtool_model import Recording, run_rule_test
from tests.support import CONFIG, FAST, PYTHON, TRAIN_PY, child_env, free_port

STEPS = 60
TOKENS_PER_STEP = 8 * 32  # FAST: global batch 8 x block 32, one rank


def test_last_step_and_totals_are_scraped_after_the_run_ends(prometheus_binary: str, tmp_path: Path) -> None:
    # Scraped every second; the endpoint lingers 6 s after the last step (a few scrapes even on a loaded machine,
    # where 2.5 s once gave none). Without the linger the last step is almost never scraped.
    port = free_port()
    config = build_prometheus_config([HostEntry("127.0.0.1")], agent_port=free_port(), train_port=port,
                                     scrape_interval="1s", alertmanagers=())
    server = PrometheusServer(prometheus_binary, tmp_path, config)
    try:
        job = subprocess.run(
            [PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *FAST, f"training.max_steps={STEPS}",
             "checkpoint.enabled=false", f"monitoring.metrics_port={port}", "monitoring.metrics_linger_s=6",
             f"monitoring.run_dir={tmp_path}", "monitoring.run_name=ending"],
            cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300,
        )
        assert job.returncode == 0, job.stderr[-3000:]

        def last(name: str) -> float | None:
            result = server.query(f'last_over_time({name}{{run="ending"}}[10m])')
            return float(result[0]["value"][1]) if result else None

        assert last("ddlc_train_step") == STEPS
        assert last("ddlc_train_steps_total") == STEPS
        assert last("ddlc_train_tokens_total") == STEPS * TOKENS_PER_STEP
        assert last("ddlc_train_finished") == 1  # so DDLCTrainingRankDown stays quiet
        assert last("ddlc_checkpoint_enabled") == 0  # checkpoint.enabled=false: DDLCCheckpointOverdue stays quiet
    finally:
        server.stop()


def test_throughput_and_cost_per_token_panels_count_every_step(promtool: str, tmp_path: Path) -> None:
    # Two ranks, scraped once a minute. Each minute: 9 steps of 3 s and one of 33 s (a log step that waits for the
    # device, or a checkpoint) -> 10 steps x 1000 tokens per 60 s = 166.67 tokens/s per rank. The last-step gauge
    # a scrape sees says 1000 / 33 = 30 tokens/s.
    clock = [0.0]
    ranks = [TrainingMetrics("uneven", rank=r, world_size=2, node="n1", instance_type="p4d.24xlarge", num_nodes=1,
                             clock=lambda: clock[0]) for r in range(2)]
    recording = Recording()
    step = 0
    for minute in range(16):
        if minute:
            for seconds in [3.0] * 9 + [33.0]:
                step += 1
                clock[0] += seconds
                for metrics in ranks:
                    metrics.observe_step(step, 2.0, 1e-3, 1.0, seconds, 1000, 4)
        for number, metrics in enumerate(ranks):
            metrics.publish()
            recording.scrape(minute, metrics, job="ddlc-train", instance=f"n1:{9500 + number}")
    throughput = 2 * 10 * 1000 / 60
    per_1m_tokens = ranks[0].hourly_usd / 3600 / throughput * 1e6

    def promql(panel) -> str:
        return substitute_grafana_variables(panel.series[0].promql, range_seconds=3600, step_seconds=60)

    result = run_rule_test(promtool, tmp_path, rules_text(), recording, expr_tests=[
        {"expr": f"round({promql(TRAINING_PROGRESS.panel('throughput'))})", "eval_time": "15m",
         "exp_samples": [{"labels": '{run="uneven"}', "value": round(throughput)}]},
        {"expr": f"round(100 * {promql(COST_TRACKING.panel('cost-per-1m-tokens'))})", "eval_time": "15m",
         "exp_samples": [{"labels": '{run="uneven"}', "value": math.floor(100 * per_1m_tokens + 0.5)}]},
    ])
    assert result.returncode == 0, result.stdout + result.stderr
