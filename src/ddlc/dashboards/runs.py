"""Reading the local run store: `runs/<run>/metrics.jsonl`, `summary.json`, `config.yaml`.

The files may be mid-write while a run goes on (the trainer appends to metrics.jsonl), so a partial last line
is skipped rather than fatal.
"""

from __future__ import annotations

import json
import math
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ddlc.errors import UserError


@dataclass
class RunRecord:
    name: str
    path: Path
    steps: list[dict[str, Any]]
    summary: Optional[dict[str, Any]] = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def start_time(self) -> Optional[float]:
        """When the first logged step began (its end time minus its duration)."""
        if not self.steps:
            return None
        first = self.steps[0]
        return float(first["time"]) - float(first.get("step_time_s") or 0.0)

    @property
    def end_time(self) -> Optional[float]:
        return float(self.steps[-1]["time"]) if self.steps else None

    @property
    def wall_seconds(self) -> float:
        if not self.steps:
            return 0.0
        return max(self.end_time - self.start_time, 0.0)

    @property
    def target_steps(self) -> Optional[int]:
        """training.max_steps from the run's config.yaml (None for epoch-based runs)."""
        value = (self.config.get("training") or {}).get("max_steps")
        return int(value) if value else None

    @property
    def target_epochs(self) -> Optional[float]:
        value = (self.config.get("training") or {}).get("epochs")
        return float(value) if value else None

    @property
    def node(self) -> str:
        """Where the run ran: summary.json's `node` when the runtime records it, else this machine."""
        return str((self.summary or {}).get("node") or socket.gethostname())

    @property
    def num_nodes(self) -> int:
        return int((self.summary or {}).get("num_nodes") or 1)

    @property
    def instance_type(self) -> Optional[str]:
        return (self.summary or {}).get("instance_type")

    @property
    def gpus(self) -> int:
        """GPUs the run used, when the runtime recorded it (0 for CPU runs and older run stores)."""
        return int((self.summary or {}).get("gpus") or 0)


def _number(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)  # "nan"/"inf" are written as strings (JSON has no NaN)
    except (TypeError, ValueError):
        return math.nan


def read_steps(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the trainer is writing this line right now
            if "step" in record and "time" in record:
                records.append({key: (_number(v) if key not in ("step",) else int(v)) for key, v in record.items()})
    return records


def load_run(path: Path | str) -> RunRecord:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UserError(f"--run: {run_dir} is not a run directory (expected runs/<name>/ with metrics.jsonl)")
    summary = None
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError:
            summary = None  # being written
    config: dict[str, Any] = {}
    config_path = run_dir / "config.yaml"
    if config_path.exists():
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError:
            config = {}
    return RunRecord(run_dir.name, run_dir, read_steps(run_dir / "metrics.jsonl"), summary, config)


def list_runs(runs_dir: Path | str) -> list[Path]:
    """Run directories under `runs_dir` (those with a metrics.jsonl, config.yaml or summary.json), oldest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = [
        child for child in root.iterdir()
        if child.is_dir() and any((child / name).exists() for name in ("metrics.jsonl", "summary.json", "config.yaml"))
    ]
    return sorted(found, key=lambda p: ((p / "metrics.jsonl").stat().st_mtime if (p / "metrics.jsonl").exists() else 0, p.name))


def load_runs(runs_dir: Path | str, since: Optional[float] = None, names: Optional[list[str]] = None) -> list[RunRecord]:
    """Runs of the store that logged a step at or after `since` (Unix seconds), optionally only `names`."""
    runs = []
    for path in list_runs(runs_dir):
        if names and path.name not in names:
            continue
        run = load_run(path)
        if since is not None and (run.end_time is None or run.end_time < since):
            continue
        runs.append(run)
    return runs
