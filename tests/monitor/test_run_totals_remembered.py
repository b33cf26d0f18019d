"""Finished and resumed runs stay on the cost and stat panels (#17 item 4): the run's cost and tokens continue
across resumes (carried in the checkpoint's trainer state), and the panels read the last value in the dashboard's
range, not an instant value that is gone five minutes after the run."""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.error
from pathlib import Path

import pytest

from ddlc.dashboards.definition import COST_TRACKING, TRAINING_PROGRESS
from ddlc.dashboards.prometheus import substitute_grafana_variables
from ddlc.monitor.alert_rules import rules_text
from ddlc.monitor.training import TrainingMetrics
from tests.monitor.helpers import scrape, value_of
from tests.monitor.promtool_model import Recording, run_rule_test
from tests.support import CONFIG, FAST, PYTHON, TRAIN_PY, child_env, free_port


def test_a_finished_resumed_run_keeps_its_totals_on_the_panels(promtool: str, tmp_path: Path) -> None:
    clock = [0.0]

    def attempt() -> TrainingMetrics:
        return TrainingMetrics("resumed", rank=0, world_size=1, node="n0", instance_type="p4d.24xlarge", num_nodes=1,
                               clock=lambda: clock[0])

    first, second = attempt(), None
    recording = Recording()
    carried = None
    for minute in range(41):
        clock[0] = 60.0 * minute
        if 1 <= minute <= 10:  # attempt 1: a step a minute, a checkpoint at step 8, crashes after minute 10
            first.observe_step(minute, 2.0, 1e-3, 1.0, 60.0, 1000, 4, tokens_seen=minute * 1000)
            first.publish()
            if minute == 8:
                carried = first.run_cost_usd()  # what the trainer puts in the trainer state
            recording.scrape(minute, first, job="ddlc-train", instance="n0:9500")
        if minute == 15:  # attempt 2 resumes from step 8
            second = attempt()
            second.resumed(carried)
        if 16 <= minute <= 25:  # steps 9..18, then finishes; its endpoint lingers for the scrape at 26
            step = minute - 7
            second.observe_step(step, 2.0, 1e-3, 1.0, 60.0, 1000, 4, tokens_seen=step * 1000)
            second.publish()
            if minute == 25:
                second.finish()
        if 15 <= minute <= 26:
            recording.scrape(minute, second, job="ddlc-train", instance="n0:9500")
    hourly = first.hourly_usd
    cost = hourly * 8 / 60 + hourly * 10 / 60  # attempt 1 up to its checkpoint + attempt 2 (minutes 15-25)

    def promql(panel) -> str:
        return substitute_grafana_variables(panel.series[0].promql, range_seconds=3600, step_seconds=60)

    def cents(board, panel_id: str, labels: str) -> dict:
        return {"expr": f"round(100 * {promql(board.panel(panel_id))})", "eval_time": "40m",
                "exp_samples": [{"labels": labels, "value": math.floor(100 * cost + 0.5)}]}

    result = run_rule_test(promtool, tmp_path, rules_text(), recording, expr_tests=[
        # 14 minutes after the run's last scrape: its series are stale, the panels still show it
        cents(COST_TRACKING, "cost-total", '{run="resumed"}'),
        cents(COST_TRACKING, "cost-by-run", '{run="resumed"}'),
        cents(COST_TRACKING, "cost-by-node", '{node="n0"}'),
        {"expr": promql(TRAINING_PROGRESS.panel("tokens-seen")), "eval_time": "40m",
         "exp_samples": [{"labels": '{run="resumed"}', "value": 18000}]},
        {"expr": promql(TRAINING_PROGRESS.panel("step")), "eval_time": "40m",
         "exp_samples": [{"labels": '{run="resumed"}', "value": 18}]},
    ])
    assert result.returncode == 0, result.stdout + result.stderr


def _train(tmp_path: Path, port: int, steps: int) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *FAST, f"training.max_steps={steps}",
         "checkpoint.interval_steps=10", "checkpoint.async_save=false", f"monitoring.metrics_port={port}",
         "monitoring.metrics_linger_s=2", "monitoring.instance_type=p4d.24xlarge", f"monitoring.run_dir={tmp_path}",
         "monitoring.run_name=carried"],
        cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _last_scrape(job: subprocess.Popen, url: str) -> dict:
    """Scrape until the job exits; the last answer (taken while the endpoint lingered)."""
    last: dict = {}
    while job.poll() is None:
        try:
            last = scrape(url)
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    out, err = job.communicate()
    assert job.returncode == 0, err[-3000:]
    return last


def test_the_checkpoint_carries_the_cost_into_the_resumed_run(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    first = _last_scrape(_train(tmp_path, port, 20), url)
    states = sorted(tmp_path.glob("carried/checkpoints/**/trainer_state.json"))
    assert states, list(tmp_path.rglob("*"))[:20]
    carried = json.loads(states[-1].read_text())["cost_usd"]
    assert carried > 0
    assert value_of(first, "ddlc_train_tokens_seen", run="carried") == 20 * 8 * 32

    second = _last_scrape(_train(tmp_path, port, 30), url)  # resumes from step 20
    assert value_of(second, "ddlc_train_step", run="carried") == 30
    assert value_of(second, "ddlc_train_tokens_seen", run="carried") == 30 * 8 * 32
    assert value_of(second, "ddlc_train_tokens_total", run="carried") == 10 * 8 * 32  # this attempt's
    attempt_cost = value_of(second, "ddlc_cost_usd_total", run="carried")
    assert value_of(second, "ddlc_run_cost_usd", run="carried") == pytest.approx(carried + attempt_cost, rel=1e-9)
