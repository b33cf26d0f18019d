"""Network counters: every interface through psutil, and EFA devices from sysfs where present.

Counters are cumulative bytes/packets; Prometheus turns them into bytes/s with `rate()`, and the
CloudWatch publisher sends per-second rates between two publishes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import psutil
from prometheus_client.core import CounterMetricFamily, Metric

log = logging.getLogger(__name__)

DEFAULT_INFINIBAND_ROOT = Path("/sys/class/infiniband")

# EFA hw_counters file -> (metric name without `_total`, help). Other counters in the directory are ignored.
EFA_COUNTERS: dict[str, tuple[str, str]] = {
    "rx_bytes": ("ddlc_efa_receive_bytes", "Bytes received by the EFA port."),
    "tx_bytes": ("ddlc_efa_transmit_bytes", "Bytes sent by the EFA port."),
    "rx_pkts": ("ddlc_efa_receive_packets", "Packets received by the EFA port."),
    "tx_pkts": ("ddlc_efa_transmit_packets", "Packets sent by the EFA port."),
    "rx_drops": ("ddlc_efa_receive_drops", "Packets the EFA port dropped on receive."),
    "rdma_read_bytes": ("ddlc_efa_rdma_read_bytes", "Bytes this node read from peers with RDMA read."),
    "rdma_write_bytes": ("ddlc_efa_rdma_write_bytes", "Bytes this node wrote to peers with RDMA write."),
    "rdma_read_resp_bytes": ("ddlc_efa_rdma_read_response_bytes", "Bytes peers read from this node."),
    "rdma_write_recv_bytes": ("ddlc_efa_rdma_write_receive_bytes", "Bytes peers wrote into this node."),
}


def read_efa_counters(root: Path) -> dict[tuple[str, str], dict[str, int]]:
    """{(device, port): {counter file: value}} for `<root>/<device>/ports/<port>/hw_counters/*`.

    A missing root means no EFA on this node (an empty result); an unreadable or non-numeric counter is skipped.
    """
    found: dict[tuple[str, str], dict[str, int]] = {}
    if not root.is_dir():
        return found
    for counters_dir in sorted(root.glob("*/ports/*/hw_counters")):
        device, port = counters_dir.parent.parent.parent.name, counters_dir.parent.name
        values: dict[str, int] = {}
        for counter_file in counters_dir.iterdir():
            if counter_file.name not in EFA_COUNTERS:
                continue
            try:
                values[counter_file.name] = int(counter_file.read_text().strip())
            except (OSError, ValueError) as error:
                log.debug("skipping %s: %s", counter_file, error)
        found[(device, port)] = values
    return found


class NetworkCollector:
    """Per-interface bytes/packets (psutil) plus EFA port counters (sysfs)."""

    def __init__(self, node: str, infiniband_root: Path | str = DEFAULT_INFINIBAND_ROOT) -> None:
        self.node = node
        self.infiniband_root = Path(infiniband_root)

    def collect(self) -> Iterator[Metric]:
        node = self.node
        labels = ["node", "device"]
        families = {
            "bytes_recv": CounterMetricFamily("ddlc_network_receive_bytes", "Bytes received on the interface.", labels=labels),
            "bytes_sent": CounterMetricFamily("ddlc_network_transmit_bytes", "Bytes sent on the interface.", labels=labels),
            "packets_recv": CounterMetricFamily("ddlc_network_receive_packets", "Packets received on the interface.", labels=labels),
            "packets_sent": CounterMetricFamily("ddlc_network_transmit_packets", "Packets sent on the interface.", labels=labels),
            "errin": CounterMetricFamily("ddlc_network_receive_errors", "Receive errors on the interface.", labels=labels),
            "errout": CounterMetricFamily("ddlc_network_transmit_errors", "Transmit errors on the interface.", labels=labels),
        }
        for device, counters in sorted(psutil.net_io_counters(pernic=True).items()):
            for field, family in families.items():
                family.add_metric([node, device], getattr(counters, field))
        yield from families.values()

        efa_labels = ["node", "device", "port"]
        efa = {
            counter: CounterMetricFamily(name, help_text, labels=efa_labels)
            for counter, (name, help_text) in EFA_COUNTERS.items()
        }
        for (device, port), values in read_efa_counters(self.infiniband_root).items():
            for counter, value in values.items():
                efa[counter].add_metric([node, device, port], value)
        yield from (family for family in efa.values() if family.samples)  # nothing at all on nodes without EFA
