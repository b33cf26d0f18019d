"""Data-loader wait per step and peak memory per rank, from a real 2-rank torchrun job (gloo): rank 0's batches
take 50 ms longer to fetch (a slow loader), rank 1 holds 300 MB more host memory. Read from both ranks' real
endpoints (which linger after the last step) and from rank 0's metrics.jsonl."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.monitor.test_training_job_scrape import _two_free_ports
from tests.support import CONFIG, FAST, TRAIN_PY, child_env, stop_job, torchrun

RUN = "step-stats"
STEPS = 10
SLEEP_S = 0.05
EXTRA_BYTES = 300 * 2**20
SCRIPT = f'''
import os, runpy, sys, time
import torch
from ddlc.runtime import data

if os.environ.get("RANK") == "0":  # a slow data loader on rank 0
    original = data.GlobalBatchSampler.batch
    def slow_batch(self, *args, **kwargs):
        time.sleep({SLEEP_S})
        return original(self, *args, **kwargs)
    data.GlobalBatchSampler.batch = slow_batch
else:  # rank 1 holds more host memory, touched so that it is resident
    held = torch.ones({EXTRA_BYTES // 4}, dtype=torch.float32)
sys.argv[0] = {str(TRAIN_PY)!r}
runpy.run_path({str(TRAIN_PY)!r}, run_name="__main__")
'''


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_data_wait_and_peak_memory_per_rank(tmp_path: Path) -> None:
    base = _two_free_ports()
    script = tmp_path / "step_stats_train.py"
    script.write_text(SCRIPT)
    job = subprocess.Popen(
        torchrun("--standalone", "--nproc_per_node=2", str(script), "--config", str(CONFIG), *FAST,
                 f"training.max_steps={STEPS}", "checkpoint.enabled=false", f"monitoring.metrics_port={base}",
                 "monitoring.metrics_linger_s=60", f"monitoring.run_dir={tmp_path}", f"monitoring.run_name={RUN}"),
        cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        ranks: dict[int, dict[str, float]] = {}
        deadline = time.monotonic() + 180
        while len(ranks) < 2:  # both ranks finished and lingering: their last values are final
            if job.poll() is not None:
                raise AssertionError(f"the job exited ({job.returncode}):\n{job.communicate()[1][-4000:]}")
            assert time.monotonic() < deadline, "the ranks did not finish"
            for rank in (0, 1):
                try:
                    samples = _scrape(base + rank)
                except OSError:
                    continue
                if samples.get("ddlc_train_finished") == 1:
                    ranks[rank] = samples
            time.sleep(0.5)
    finally:
        stop_job(job)

    waits = {rank: s["ddlc_train_data_wait_seconds_total"] for rank, s in ranks.items()}
    assert all(s["ddlc_train_steps_total"] == STEPS for s in ranks.values())
    assert waits[0] >= STEPS * SLEEP_S, waits  # at least one slowed fetch per step
    assert 0 < waits[1] < waits[0], waits
    peaks = {rank: s["ddlc_train_host_memory_peak_bytes"] for rank, s in ranks.items()}
    assert peaks[1] - peaks[0] > 0.6 * EXTRA_BYTES, peaks
    assert all("ddlc_train_gpu_memory_peak_bytes" not in s for s in ranks.values())  # CPU job: not measured

    records = [json.loads(line) for line in (tmp_path / RUN / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(r["data_wait_s"] >= SLEEP_S for r in records)  # rank 0 writes the file
    assert sum(r["data_wait_s"] for r in records) <= waits[0] + 1e-6
    assert all(0 < r["peak_memory_bytes"] <= peaks[0] for r in records)


def test_panels_read_the_wait_per_step_and_the_peaks(promtool: str, tmp_path: Path) -> None:
    """The Training tab's data-wait panel gives each rank's wait per step (promtool over what two ranks export:
    rank 1 waits 0.3 s a step, rank 0 0.06 s), the peak-memory panel each rank's peaks."""
    from ddlc.dashboards.definition import TRAINING_PROGRESS
    from ddlc.dashboards.prometheus import substitute_grafana_variables
    from ddlc.monitor.training import TrainingMetrics
    from tests.monitor.promtool_model import Recording, run_rule_test

    ranks = [TrainingMetrics("r", rank=r, world_size=2, node="n1", instance_type=None, num_nodes=1) for r in (0, 1)]
    recording = Recording()
    step = 0
    for minute in range(6):
        for _ in range(30):  # 30 steps a minute
            step += 1
            for metrics, wait in zip(ranks, (0.06, 0.3)):
                metrics.observe_step(step, 1.0, 1e-3, 1.0, 2.0, 10, 1, data_wait_seconds=wait,
                                     host_memory_peak_bytes=(metrics.rank + 1) * 2**30)
        for metrics in ranks:
            recording.scrape(minute, metrics, job="ddlc-train", instance=f"n1:{9500 + metrics.rank}")

    def expr(panel_id: str, index: int = 0) -> str:
        return substitute_grafana_variables(TRAINING_PROGRESS.panel(panel_id).series[index].promql, 3600, 30)

    labels = lambda rank, **more: "{" + ", ".join(  # noqa: E731
        f'{k}="{v}"' for k, v in sorted({"run": "r", "rank": str(rank), "node": "n1", **more}.items())) + "}"
    target = lambda rank: {"job": "ddlc-train", "instance": f"n1:{9500 + rank}"}  # noqa: E731
    tests = [
        {"expr": f"round(1000 * ({expr('data-wait')}))", "eval_time": "5m",
         "exp_samples": [{"labels": labels(r, **target(r)), "value": v} for r, v in ((0, 60), (1, 300))]},
        {"expr": expr("peak-memory", 1), "eval_time": "5m",
         "exp_samples": [{"labels": "ddlc_train_host_memory_peak_bytes" + labels(r, **target(r)),
                          "value": (r + 1) * 2**30} for r in (0, 1)]},
    ]
    result = run_rule_test(promtool, tmp_path, "groups: []\n", recording, expr_tests=tests)
    assert result.returncode == 0, result.stdout + result.stderr
