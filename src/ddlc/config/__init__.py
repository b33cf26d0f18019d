"""Typed, validated configuration (`Config`) with YAML files and dotted command-line overrides."""

from ddlc.config.loader import ConfigError, apply_overrides, dump_config, load_config, parse_override
from ddlc.config.schema import (
    CheckpointConfig,
    Config,
    DataConfig,
    DistributedConfig,
    ModelConfig,
    MonitoringConfig,
    OptimizerConfig,
    TrainingConfig,
)

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "ModelConfig",
    "MonitoringConfig",
    "OptimizerConfig",
    "TrainingConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
    "parse_override",
]
