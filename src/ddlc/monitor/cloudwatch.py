"""Publishing the same metrics to CloudWatch with PutMetricData.

Names are the Prometheus sample names (`ddlc_gpu_utilization_ratio`, `ddlc_network_receive_bytes_total`, ...),
labels become dimensions (node, gpu, device, ...). Gauges are sent as read. Counters are sent as a per-second
rate over the interval between two publishes (CloudWatch has no counter type, and alarms want rates), so a
counter first appears on the second publish.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry

from ddlc.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "DDLC"
MAX_DATUMS_PER_CALL = 500  # PutMetricData takes up to 1000 datums and 1 MB per call
MAX_DIMENSIONS = 30


def unit_for(sample_name: str, is_counter: bool) -> str:
    """CloudWatch unit from the Prometheus unit suffix."""
    if is_counter:
        return "Bytes/Second" if sample_name.endswith("_bytes_total") else "Count/Second"
    if sample_name.endswith("_bytes"):
        return "Bytes"
    if sample_name.endswith("_seconds"):
        return "Seconds"
    return "None"


def make_client(region: str | None = None, endpoint_url: str | None = None) -> Any:
    import boto3

    session = boto3.session.Session(region_name=region)
    if session.region_name is None:
        raise UserError("CloudWatch publishing needs an AWS region: pass --region or set AWS_REGION")
    return session.client("cloudwatch", endpoint_url=endpoint_url)


class CloudWatchPublisher:
    """Reads a registry and sends it to CloudWatch, once (`publish_once`) or every `interval_s` (`start`)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        client: Any,
        namespace: str = DEFAULT_NAMESPACE,
        interval_s: float = 60.0,
        clock: Any = time.time,
    ) -> None:
        if interval_s <= 0:
            raise UserError(f"CloudWatch publish interval must be positive, got {interval_s}")
        self.registry = registry
        self.client = client
        self.namespace = namespace
        self.interval_s = interval_s
        self._clock = clock
        self._previous: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def build_metric_data(self) -> list[dict[str, Any]]:
        now = self._clock()
        data: list[dict[str, Any]] = []
        for family in self.registry.collect():
            is_counter = family.type == "counter"
            if family.type not in ("gauge", "counter"):
                continue
            for sample in family.samples:
                if sample.name.endswith("_created") or not math.isfinite(sample.value):
                    continue
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if v))
                value = sample.value
                if is_counter:
                    key = (sample.name, labels)
                    previous = self._previous.get(key)
                    self._previous[key] = (now, value)
                    if previous is None or now <= previous[0] or value < previous[1]:
                        continue  # first sight, or the counter reset: no rate yet
                    value = (value - previous[1]) / (now - previous[0])
                data.append(
                    {
                        "MetricName": sample.name,
                        "Dimensions": [{"Name": k, "Value": v} for k, v in labels[:MAX_DIMENSIONS]],
                        "Timestamp": now,
                        "Value": float(value),
                        "Unit": unit_for(sample.name, is_counter),
                    }
                )
        return data

    def publish_once(self) -> int:
        """Send one round; returns how many datums went out."""
        data = self.build_metric_data()
        for start in range(0, len(data), MAX_DATUMS_PER_CALL):
            self.client.put_metric_data(Namespace=self.namespace, MetricData=data[start : start + MAX_DATUMS_PER_CALL])
        return len(data)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ddlc-cloudwatch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                sent = self.publish_once()
                log.debug("published %d datums to CloudWatch namespace %s", sent, self.namespace)
            except Exception as error:  # throttling, expired credentials, no network: keep serving Prometheus
                log.warning("CloudWatch publish failed: %s", error)
            if self._stop.wait(self.interval_s):
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

