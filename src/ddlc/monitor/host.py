"""CPU, memory and the disk that holds the checkpoints, through psutil."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

import psutil
from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger(__name__)


class HostCollector:
    """Node CPU/memory, and disk usage of `checkpoint_path` (the volume checkpoints are written to)."""

    def __init__(self, node: str, checkpoint_path: Path | str | None = None) -> None:
        self.node = node
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        # psutil measures CPU use between two calls; this first call starts the window.
        psutil.cpu_percent(interval=None)

    def collect(self) -> Iterator[Metric]:
        node = self.node
        cpu = GaugeMetricFamily("ddlc_cpu_utilization_ratio", "CPU busy share since the previous scrape (0-1).", labels=["node"])
        cpu.add_metric([node], psutil.cpu_percent(interval=None) / 100.0)
        cores = GaugeMetricFamily("ddlc_cpus", "Logical CPUs.", labels=["node"])
        cores.add_metric([node], psutil.cpu_count() or 0)
        load = GaugeMetricFamily("ddlc_load1", "One-minute load average.", labels=["node"])
        load.add_metric([node], os.getloadavg()[0])
        memory = psutil.virtual_memory()
        mem_total = GaugeMetricFamily("ddlc_memory_total_bytes", "Physical memory.", labels=["node"])
        mem_total.add_metric([node], memory.total)
        mem_used = GaugeMetricFamily("ddlc_memory_used_bytes", "Memory in use (total - available).", labels=["node"])
        mem_used.add_metric([node], memory.total - memory.available)
        mem_available = GaugeMetricFamily("ddlc_memory_available_bytes", "Memory available without swapping.", labels=["node"])
        mem_available.add_metric([node], memory.available)
        yield from (cpu, cores, load, mem_total, mem_used, mem_available)

        if self.checkpoint_path is None:
            return
        labels = ["node", "path"]
        path = str(self.checkpoint_path)
        try:
            usage = psutil.disk_usage(path)
        except OSError as error:  # the volume went away: leave the series out rather than fail the scrape
            log.warning("cannot read disk usage of %s: %s", path, error)
            return
        for name, help_text, value in (
            ("ddlc_disk_total_bytes", "Size of the volume holding the checkpoint path.", usage.total),
            ("ddlc_disk_used_bytes", "Bytes used on the volume holding the checkpoint path.", usage.used),
            ("ddlc_disk_free_bytes", "Bytes free (for unprivileged users) on that volume.", usage.free),
        ):
            family = GaugeMetricFamily(name, help_text, labels=labels)
            family.add_metric([node, path], value)
            yield family
