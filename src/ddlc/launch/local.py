"""Start a training job on this machine under torchrun (standalone rendezvous), and summarise it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from ddlc.config.loader import load_config
from ddlc.config.schema import Config
from ddlc.runtime.preflight import check_job, local_device


def default_nproc() -> int:
    """One worker per GPU; two CPU workers when there is no GPU (the demo)."""
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install must not stop a CPU run
        count = 0
    return count or 2


@dataclass
class LocalJob:
    """A resolved local job: validated config plus the exact torchrun command line."""

    config: Config
    command: list[str]
    run_dir: Path


def plan_local_job(
    config_path: Optional[str],
    overrides: Sequence[str],
    nproc: Optional[int] = None,
    python: str = sys.executable,
    max_restarts: int = 0,
) -> LocalJob:
    """Validate the config here (bad input fails before any worker starts) and build the torchrun command."""
    overrides = list(overrides)
    cfg = load_config(config_path, overrides)
    if not cfg.monitoring.run_name:
        # Name the run up front so the launcher knows where the workers will write.
        name = datetime.now(timezone.utc).strftime("run-%Y%m%d-%H%M%S")
        overrides.append(f"monitoring.run_name={name}")
        cfg = load_config(config_path, overrides)
    workers = nproc or default_nproc()
    # Checks that would otherwise fail inside every worker: batch split, data path, output dirs, memory.
    check_job(cfg, workers, workers, local_device(cfg.distributed.device))
    command = [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={workers}",
        f"--max-restarts={max_restarts}",
        "-m",
        "ddlc.train",
    ]
    if config_path is not None:
        command += ["--config", str(config_path)]
    command += overrides
    return LocalJob(cfg, command, Path(cfg.monitoring.run_dir) / cfg.monitoring.run_name)


# Restarted workers must not read the previous attempt's addresses from torchrun's shared rendezvous store
# (pytorch/pytorch#135712: gloo/NCCL init then dials a dead peer). A user's own setting wins.
TORCHRUN_ENV_DEFAULTS = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def run_local_job(job: LocalJob) -> int:
    """Run torchrun in the foreground; its workers' output goes straight to this terminal."""
    env = {**TORCHRUN_ENV_DEFAULTS, **os.environ}
    try:
        return subprocess.call(job.command, env=env)
    except KeyboardInterrupt:
        return 130


def read_summary(run_dir: Path) -> Optional[dict]:
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())
