"""ddlc.monitor: node agent, training metrics, Prometheus config/alert rules, CloudWatch publishing.

Metric reference: docs/metrics.md.
"""

from ddlc.monitor.agent import Agent, AgentSettings, build_node_registry
from ddlc.monitor.cloudwatch import CloudWatchPublisher
from ddlc.monitor.pricing import estimate_cost_usd, hourly_price, load_price_table
from ddlc.monitor.training import TrainingMetrics, rank_metrics_port

__all__ = [
    "Agent",
    "AgentSettings",
    "CloudWatchPublisher",
    "TrainingMetrics",
    "build_node_registry",
    "estimate_cost_usd",
    "hourly_price",
    "load_price_table",
    "rank_metrics_port",
]
