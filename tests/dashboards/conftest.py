"""Shared fixtures: one real short training run (train.py, ~3 s) that every dashboard test reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import CONFIG, FAST, PYTHON, REPO, TRAIN_PY, assert_ok, run

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = Path("/usr/bin/chromium")
# Screenshots and reports a person can open after the run (runs/ is git-ignored).
ARTIFACTS = Path(os.environ.get("DDLC_TEST_ARTIFACTS", REPO / "runs" / "test-artifacts")) / "dashboards"
RUN_NAME = "dash-test"
PRICED_AS = "g5.xlarge"  # price the CPU run as a GPU instance so the cost figures are not all zero


def train(runs_dir: Path, name: str, steps: int = 20, *extra: str) -> Path:
    result = run([PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *FAST, f"training.max_steps={steps}",
                  f"monitoring.run_dir={runs_dir}", f"monitoring.run_name={name}", "monitoring.progress=plain",
                  "checkpoint.enabled=false", *extra], cwd=REPO)
    assert_ok(result)
    return runs_dir / name


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("runs")
    train(directory, RUN_NAME, 20, "data.val_fraction=0.05", "training.eval_interval=10")  # val loss: steps 10, 20
    return directory


@pytest.fixture(scope="session")
def run_dir(runs_dir) -> Path:
    return runs_dir / RUN_NAME


@pytest.fixture(scope="session")
def artifacts() -> Path:
    # Emptied once per run by tests/conftest.py (pytest_sessionstart), not here: two xdist workers share it.
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def chromium_or_skip() -> str:
    """Path of the system Chromium. Missing: a skip on a developer machine, a failure in CI."""
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail("/usr/bin/chromium is missing: `make sysdeps` installs the Debian package `chromium`")
        pytest.skip("/usr/bin/chromium not installed (apt-get install chromium, or `make sysdeps`)")
    return str(CHROMIUM)
