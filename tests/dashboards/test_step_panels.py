"""The Training tab's data-loader wait and peak memory panels from the run store: a run of this ddlc draws them,
a run written before ddlc recorded them says why they are empty (not "has not logged a step")."""

from __future__ import annotations

import json
import shutil

from ddlc.dashboards.cost import Pricing
from ddlc.dashboards.definition import TRAINING_PROGRESS
from ddlc.dashboards.panel_data import PanelData
from ddlc.monitor.pricing import load_price_table
from tests.dashboards.conftest import PRICED_AS, RUN_NAME


def test_new_run_draws_them_old_run_says_why_not(run_dir, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / RUN_NAME, ignore=shutil.ignore_patterns("checkpoints"))
    old = runs / "older"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("checkpoints"))
    lines = [json.loads(line) for line in (old / "metrics.jsonl").read_text().splitlines()]
    (old / "metrics.jsonl").write_text("".join(
        json.dumps({k: v for k, v in r.items() if k not in ("data_wait_s", "peak_memory_bytes")}) + "\n" for r in lines))
    data = PanelData(runs, Pricing(PRICED_AS, None, load_price_table()))
    new = data.dashboard_data("training-progress", RUN_NAME)["panels"]
    for panel_id in ("data-wait", "peak-memory"):
        (series,) = new[panel_id]["series"]
        assert len(series["y"]) == 20 and all(v is not None and v >= 0 for v in series["y"]), panel_id
    assert all(v > 50 * 2**20 for v in new["peak-memory"]["series"][0]["y"])  # a torch process: > 50 MB resident
    before = data.dashboard_data("training-progress", "older")["panels"]
    for panel_id in ("data-wait", "peak-memory"):
        assert before[panel_id]["series"] == []
        assert before[panel_id]["message"] == TRAINING_PROGRESS.panel(panel_id).empty_message
        assert "does not record" in before[panel_id]["message"]
