"""What a node costs while it is up, so the cost view can count idle instance-hours (no job running).

    ddlc agent --instance-type T -> ddlc_node_price_usd_per_hour{node,instance_type} (the price table's hourly price)
                                 -> ddlc_agent_start_timestamp_seconds{node}
    Prometheus: a minute is idle on a node when its agent is up and no training rank reports from that node;
    idle cost = sum over those minutes of price / 60 (the "Idle node cost" panel, `ddlc report utilization`).

The price is read once, when the agent starts (an unknown instance type is an error then, not a silent zero).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from ddlc.errors import UserError
from ddlc.monitor.pricing import hourly_price, load_price_table


class NodeCostCollector:
    def __init__(self, node: str, instance_type: str, price_table: Path | str | None = None) -> None:
        if not instance_type.strip():
            raise UserError("--instance-type: empty (name an instance type of the price table, e.g. p4d.24xlarge)")
        self.node, self.instance_type = node, instance_type
        self.hourly_usd = hourly_price(instance_type, load_price_table(price_table))
        self.started_at = time.time()

    def collect(self) -> Iterator[Metric]:
        price = GaugeMetricFamily("ddlc_node_price_usd_per_hour", "Hourly price of this node's instance type "
                                  "(the price table's), while the agent runs.", labels=["node", "instance_type"])
        price.add_metric([self.node, self.instance_type], self.hourly_usd)
        started = GaugeMetricFamily("ddlc_agent_start_timestamp_seconds", "When the node agent started.",
                                    labels=["node"])
        started.add_metric([self.node], self.started_at)
        yield from (price, started)
