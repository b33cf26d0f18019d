"""The node agent: GPU, network/EFA, CPU/memory/disk metrics of one node on a Prometheus endpoint (and, on the
head node of a Slurm cluster, Slurm's queue and node states: ddlc.monitor.slurm).

One agent runs per node (`ddlc agent`, started by the cluster's user data or by hand). Every value is
read when Prometheus scrapes (scrapes within 0.5 s of each other share one reading), so the agent does no work
between scrapes. Served by ddlc.monitor.server (waitress: bounded threads, backlog, idle timeout). Optionally the
same registry is published to CloudWatch on an interval.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from ddlc import __version__
from ddlc.errors import UserError
from ddlc.monitor.cloudwatch import DEFAULT_NAMESPACE, CloudWatchPublisher, make_client
from ddlc.monitor.gpu import GpuCollector
from ddlc.monitor.host import HostCollector
from ddlc.monitor.network import DEFAULT_INFINIBAND_ROOT, NetworkCollector
from ddlc.monitor.server import CachedExposition, MetricsServer

log = logging.getLogger(__name__)

DEFAULT_AGENT_HOST = "127.0.0.1"
DEFAULT_AGENT_PORT = 9400


@dataclass
class AgentSettings:
    host: str = DEFAULT_AGENT_HOST
    port: int = DEFAULT_AGENT_PORT
    node: str = field(default_factory=socket.gethostname)
    checkpoint_path: Path | None = None
    infiniband_root: Path = DEFAULT_INFINIBAND_ROOT
    cloudwatch: bool = False
    cloudwatch_namespace: str = DEFAULT_NAMESPACE
    cloudwatch_interval_s: float = 60.0
    region: str | None = None
    cloudwatch_endpoint_url: str | None = None
    # Periodic `ddlc health` (ddlc.monitor.node_health): 0 turns it off.
    health_interval_s: float = 0.0
    health_options: Any = None  # ddlc.ops.health.HealthOptions; None: the defaults
    unhealthy_after: int = 3  # failed runs in a row before the instance is handed to its Auto Scaling group
    replace_unhealthy: bool = False
    imds_url: str = "http://169.254.169.254"
    autoscaling_endpoint_url: str | None = None
    # squeue/sinfo on every scrape (ddlc.monitor.slurm): cluster-wide numbers, so one agent only (the head's).
    slurm_metrics: bool = False


class _AgentInfo:
    def __init__(self, node: str, gpus: GpuCollector) -> None:
        self.node, self.gpus = node, gpus

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "ddlc_agent_info", "The node agent is running (value 1).", labels=["node", "version", "nvml"]
        )
        info.add_metric([self.node, __version__, "yes" if self.gpus.available else "no"], 1)
        yield info


def build_node_registry(
    node: str,
    checkpoint_path: Path | str | None = None,
    infiniband_root: Path | str = DEFAULT_INFINIBAND_ROOT,
    nvml: Any | None = None,
) -> tuple[CollectorRegistry, GpuCollector]:
    """A registry holding every node collector. The GPU collector is returned too: close it when done."""
    registry = CollectorRegistry(auto_describe=False)
    gpus = GpuCollector(node, nvml=nvml)
    for collector in (_AgentInfo(node, gpus), gpus, NetworkCollector(node, infiniband_root), HostCollector(node, checkpoint_path)):
        registry.register(collector)
    return registry, gpus


class Agent:
    """A running node agent. Use as a context manager or call `close()`."""

    def __init__(self, settings: AgentSettings, cloudwatch_client: Any | None = None, nvml: Any | None = None) -> None:
        if settings.checkpoint_path is not None and not Path(settings.checkpoint_path).exists():
            raise UserError(f"--checkpoint-path {settings.checkpoint_path} does not exist")
        self.settings = settings
        self.registry, self._gpus = build_node_registry(
            settings.node, settings.checkpoint_path, settings.infiniband_root, nvml=nvml
        )
        if settings.slurm_metrics:
            from ddlc.monitor.slurm import SlurmCollector

            self.registry.register(SlurmCollector(settings.node))
        self.health = _health_monitor(settings)
        if self.health is not None:
            self.registry.register(self.health)
        self.publisher: CloudWatchPublisher | None = None
        if settings.cloudwatch:
            client = cloudwatch_client or make_client(settings.region, settings.cloudwatch_endpoint_url)
            self.publisher = CloudWatchPublisher(
                self.registry, client, settings.cloudwatch_namespace, settings.cloudwatch_interval_s
            )
        try:
            # Concurrent scrapes share one collection (at most one per 0.5 s), so many scrapers cost like one.
            self.server = MetricsServer(None, settings.host, settings.port, render=CachedExposition(self.registry))
        except BaseException:
            self._gpus.close()
            raise
        if self.publisher is not None:
            self.publisher.start()
        if self.health is not None:
            self.health.start()
        log.info("ddlc agent for node %s serving %s", settings.node, self.server.url)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        if self.health is not None:
            self.health.close()
        if self.publisher is not None:
            self.publisher.close()
        self.server.close()
        self._gpus.close()

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _health_monitor(settings: AgentSettings) -> Any:
    if settings.health_interval_s <= 0:
        return None
    from ddlc.monitor.node_health import HealthMonitor, replace_via_autoscaling

    on_unhealthy = (replace_via_autoscaling(settings.imds_url, settings.autoscaling_endpoint_url)
                    if settings.replace_unhealthy else None)
    return HealthMonitor(settings.node, settings.health_interval_s, settings.unhealthy_after,
                         settings.health_options, on_unhealthy=on_unhealthy)


def run_agent(settings: AgentSettings, on_ready: Any = None) -> None:
    """Run until SIGINT/SIGTERM. `on_ready(agent)` is called once the endpoint is up."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Agent(settings) as agent:
            if on_ready is not None:
                on_ready(agent)
            stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
