"""ddlc.monitor: node agent, training metrics, Prometheus config/alert rules, CloudWatch publishing.

Metric reference: docs/metrics.md.

The names below are imported on first use (PEP 562): `import ddlc.monitor.pricing` from a report or the
dashboard must not pay for the agent, prometheus_client and psutil.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Agent": "agent",
    "AgentSettings": "agent",
    "build_node_registry": "agent",
    "CloudWatchPublisher": "cloudwatch",
    "estimate_cost_usd": "pricing",
    "hourly_price": "pricing",
    "load_price_table": "pricing",
    "TrainingMetrics": "training",
    "rank_metrics_port": "training",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ddlc.monitor' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ddlc.monitor.{module}"), name)
