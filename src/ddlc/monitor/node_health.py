"""The agent's periodic health check: `ddlc health`'s checks every interval, as metrics, and self-replacement.

    every interval_s: run_health() -> ddlc_node_healthy{node, check} (1 healthy, 0 failed)
                                    -> consecutive failed runs; at `unhealthy_after` in a row: on_unhealthy(lines)
                                       (once; by default: mark this EC2 instance Unhealthy in its ASG, ddlc.monitor.asg)

The check runs on its own thread so a slow NVML never delays a scrape; a scrape shows the last completed run.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterator, Optional, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from ddlc.ops.health.model import HealthOptions, HealthResult, failures

log = logging.getLogger(__name__)

RunChecks = Callable[[], Sequence[HealthResult]]


class HealthMonitor:
    """A prometheus_client collector and a thread. `run` defaults to the live node's checks."""

    def __init__(self, node: str, interval_s: float = 60.0, unhealthy_after: int = 3,
                 options: Optional[HealthOptions] = None, run: Optional[RunChecks] = None,
                 on_unhealthy: Optional[Callable[[list[str]], Any]] = None) -> None:
        self.node = node
        self.interval_s = interval_s
        self.unhealthy_after = unhealthy_after
        self._run = run or _live_checks(options or HealthOptions())
        self._on_unhealthy = on_unhealthy
        self._results: list[HealthResult] = []
        self.consecutive_failures = 0
        self.reported = False  # on_unhealthy has been called (once per agent: the node is going away)
        self.runs = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ddlc-health", daemon=True)

    def start(self) -> "HealthMonitor":
        self._thread.start()
        return self

    def run_once(self) -> list[HealthResult]:
        try:
            results = list(self._run())
        except Exception as error:  # a check that crashes is a failed check, not a dead thread
            results = [HealthResult("health", False, f"the health check itself failed: {error}")]
        failed = failures(results)
        with self._lock:
            self._results = results
            self.runs += 1
            self.consecutive_failures = self.consecutive_failures + 1 if failed else 0
            trigger = self.consecutive_failures >= self.unhealthy_after and not self.reported
            if trigger:
                self.reported = True
        for result in failed:
            log.warning("health check failed (%d in a row): %s", self.consecutive_failures, result.line())
        if trigger and self._on_unhealthy is not None:
            try:
                self._on_unhealthy([r.line() for r in failed])
            except Exception as error:  # AWS unreachable, no permission: keep checking and exporting
                log.error("could not hand the node over for replacement: %s", error)
        return results

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.run_once()
            self._stop.wait(max(self.interval_s - (time.monotonic() - started), 0.0))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily("ddlc_node_healthy", "1 when the node passed this health check at its last "
                                    "run (ddlc health), 0 when it failed.", labels=["node", "check"])
        streak = GaugeMetricFamily("ddlc_node_health_consecutive_failures",
                                   "Health-check runs in a row with at least one failed check.", labels=["node"])
        with self._lock:
            for result in self._results:
                healthy.add_metric([self.node, result.check], 1 if result.ok else 0)
            streak.add_metric([self.node], self.consecutive_failures)
        yield healthy
        yield streak


def _live_checks(options: HealthOptions) -> RunChecks:
    def run() -> list[HealthResult]:
        from ddlc.ops.health import run_health

        return run_health(options)[1]

    return run


def replace_via_autoscaling(imds_url: str, endpoint_url: Optional[str] = None) -> Callable[[list[str]], Any]:
    """on_unhealthy for EC2: mark this instance Unhealthy in its Auto Scaling group (when it is in one)."""
    from ddlc.monitor.asg import autoscaling_client, instance_identity, mark_unhealthy

    def mark(lines: list[str]) -> Optional[str]:
        identity = instance_identity(imds_url)
        if identity is None:
            log.warning("not on EC2 (no instance identity): nothing to replace; failed: %s", "; ".join(lines))
            return None
        return mark_unhealthy(autoscaling_client(identity.region, endpoint_url), identity.instance_id)

    return mark
