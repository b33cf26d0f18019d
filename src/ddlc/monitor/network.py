"""Network counters: every interface through psutil, and EFA devices from sysfs where present.

    psutil.net_io_counters(pernic=True)          -> ddlc_network_*_total{node,device}
    /sys/class/infiniband/<dev>/ports/<port>/hw_counters/<file>
                                                 -> ddlc_efa_*_total{node,device,port}   (one per file, EFA_COUNTERS)
                                                 -> ddlc_efa_rdma_bytes_total            (rdma_read_bytes + rdma_write_bytes)

Counters are cumulative bytes/packets; Prometheus turns them into bytes/s with `rate()`, the local dashboard
takes the same rate between two samples, and the CloudWatch publisher sends per-second rates between two
publishes. The EFA traffic panel reads `ddlc_efa_rdma_bytes_total` in all three, so they show one quantity.
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

# "RDMA bytes": what this node moved with RDMA operations it started, reads from peers plus writes to peers.
# One counter, so Prometheus, the local dashboard and CloudWatch show the same number (NCCL on p4d moves its
# data with RDMA read, so write alone stays near zero there). A transfer counts once, at the node that started
# it: the sum over nodes is the cluster's RDMA payload.
EFA_RDMA_BYTES = "ddlc_efa_rdma_bytes"
EFA_RDMA_PARTS = ("rdma_read_bytes", "rdma_write_bytes")


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
        rdma = CounterMetricFamily(
            EFA_RDMA_BYTES, "RDMA bytes this node started: rdma_read_bytes + rdma_write_bytes.", labels=efa_labels
        )
        for (device, port), values in read_efa_counters(self.infiniband_root).items():
            for counter, value in values.items():
                efa[counter].add_metric([node, device, port], value)
            # The parts this device has (a driver or device without RDMA write has no rdma_write_bytes file:
            # then RDMA bytes are the reads alone), and only when each of them was read: a sum missing a part
            # this scrape would look like a counter reset.
            counters_dir = self.infiniband_root / device / "ports" / port / "hw_counters"
            parts = [part for part in EFA_RDMA_PARTS if (counters_dir / part).exists()]
            if parts and all(part in values for part in parts):
                rdma.add_metric([node, device, port], sum(values[part] for part in parts))
        yield from (family for family in (*efa.values(), rdma) if family.samples)  # nothing at all on nodes without EFA
