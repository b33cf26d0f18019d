"""Which config a job uses and which run it belongs to, decided the same way by `ddlc train` and by every worker.

    --config given ─┐
    ./config.yaml ──┴─> config path ─> load ─> run name: monitoring.run_name, else <config stem>-<hash of what
                                                          the run computes, without its length>

The same command therefore names the same run, and resumes it: a longer `training.max_steps`, another world size,
engine or checkpoint interval continue the run; another learning rate, model or data is another run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Optional

from ddlc.config.schema import Config

DEFAULT_CONFIG = "config.yaml"

# What does not change the computation a run's checkpoints hold: how long it runs, how it is launched, sharded,
# logged and checkpointed. Changing any of these continues the run instead of starting another one.
_NOT_IDENTITY = {
    "training": ("max_steps", "epochs", "stop_at_step", "log_interval", "micro_batch_size", "grad_accum_steps",
                 "precision"),
    "distributed": None,  # the whole section
    "monitoring": None,
    "checkpoint": ("enabled", "interval_steps", "keep_last", "keep_every", "async_save", "resume",
                   "verify_on_resume", "rpo_seconds", "endpoint_url"),
}


def resolve_config_path(config: Optional[str], cwd: Optional[Path] = None) -> Optional[str]:
    """`--config` as given; without it, `config.yaml` in the working directory when there is one."""
    if config is not None:
        return config
    candidate = (cwd or Path.cwd()) / DEFAULT_CONFIG
    return DEFAULT_CONFIG if candidate.is_file() else None


def identity(cfg: Config) -> dict:
    data = cfg.model_dump(mode="json")
    for section, fields in _NOT_IDENTITY.items():
        if fields is None:
            data.pop(section, None)
        else:
            for name in fields:
                data.get(section, {}).pop(name, None)
    if cfg.training.global_batch_size is None:  # then the per-worker sizes define the batch
        data["training"]["micro_batch_size"] = cfg.training.micro_batch_size
        data["training"]["grad_accum_steps"] = cfg.training.grad_accum_steps
    return data


def derive_run_name(cfg: Config, config_path: Optional[str] = None) -> str:
    """`<config file stem>-<8 hex digits>` (or `run-<...>` without a file), stable across launches."""
    digest = hashlib.sha256(json.dumps(identity(cfg), sort_keys=True).encode()).hexdigest()[:8]
    stem = Path(config_path).stem if config_path else "run"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "run"
    return f"{stem}-{digest}"


def run_name(cfg: Config, config_path: Optional[str] = None) -> str:
    return cfg.monitoring.run_name or derive_run_name(cfg, config_path)
