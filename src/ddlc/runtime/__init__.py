"""Distributed init, model wrapping, the training loop and its metrics; each usable from your own script."""

from ddlc.runtime.distributed import (
    DistContext,
    LaunchEnv,
    detect_launch_env,
    hard_exit,
    init_distributed,
    shutdown_distributed,
)
from ddlc.runtime.metrics import MetricsLogger, read_metrics
from ddlc.runtime.model import GPT
from ddlc.runtime.preemption import PREEMPTED_EXIT_CODE
from ddlc.runtime.parallel import clip_and_measure, gradient_sync, unwrap, wrap_model
from ddlc.runtime.trainer import Trainer, TrainResult, train

__all__ = [
    "DistContext",
    "GPT",
    "LaunchEnv",
    "MetricsLogger",
    "PREEMPTED_EXIT_CODE",
    "TrainResult",
    "Trainer",
    "clip_and_measure",
    "detect_launch_env",
    "gradient_sync",
    "hard_exit",
    "init_distributed",
    "read_metrics",
    "shutdown_distributed",
    "train",
    "unwrap",
    "wrap_model",
]
