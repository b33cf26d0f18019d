"""This machine's GPU, CPU, memory and network (and Slurm's queue where squeue/sinfo exist), sampled with the node
agent's own collectors.

The local dashboard has no Prometheus by default; it keeps a short history of the same metrics the agent
exports (same names, same labels), so its GPU and network panels read the series Grafana would.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections import deque
from typing import Optional

from ddlc.dashboards.definition import LocalSource

Key = tuple[str, tuple[tuple[str, str], ...]]


class HostSampler:
    def __init__(self, interval_s: float = 2.0, history: int = 900, node: Optional[str] = None) -> None:
        from ddlc.monitor.gpu import GpuCollector
        from ddlc.monitor.host import HostCollector
        from ddlc.monitor.network import NetworkCollector

        self.node = node or socket.gethostname()
        self.interval_s = interval_s
        self._gpu = GpuCollector(self.node, watch_xid=False)
        self._collectors = [HostCollector(self.node), NetworkCollector(self.node), self._gpu]
        from ddlc.monitor.slurm import SlurmCollector, slurm_available

        if slurm_available():  # a Slurm head or login node: the queue and node panels have data
            self._collectors.append(SlurmCollector(self.node))
        self._series: dict[Key, deque[tuple[float, float]]] = {}
        self._history = history
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def has_gpu(self) -> bool:
        return self._gpu.gpu_count > 0

    def sample_once(self) -> None:
        now = time.time()
        readings: list[tuple[Key, float]] = []
        for collector in self._collectors:
            for family in collector.collect():
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue
                    readings.append(((sample.name, tuple(sorted(sample.labels.items()))), float(sample.value)))
        with self._lock:
            for key, value in readings:
                self._series.setdefault(key, deque(maxlen=self._history)).append((now, value))

    def start(self) -> "HostSampler":
        self.sample_once()
        self._thread = threading.Thread(target=self._loop, name="ddlc-dashboard-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample_once()
            except Exception:  # a transient psutil/NVML failure must not end the history
                continue

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._gpu.close()

    def series(self, source: LocalSource) -> list[tuple[str, list[float], list[float]]]:
        """(label, times, values) per `source.by` value (one combined series without `by`)."""
        with self._lock:
            matching = {key: list(points) for key, points in self._series.items() if key[0] == source.key}
            denominators = (
                {key[1]: list(points) for key, points in self._series.items() if key[0] == source.divide_by}
                if source.divide_by else {}
            )
        groups: dict[str, list[tuple[list[float], list[float]]]] = {}
        for (_, labels), points in matching.items():
            times, values = _values(points, source.rate)
            if source.divide_by:
                below = denominators.get(labels)
                if not below:
                    continue
                _, totals = _values(below, False)
                n = min(len(values), len(totals))
                times, values = times[-n:], [v / t if t else math.nan for v, t in zip(values[-n:], totals[-n:])]
            values = [v * source.scale for v in values]
            label = dict(labels).get(source.by, "") if source.by else "all"
            groups.setdefault(label, []).append((times, values))
        result = []
        for label, members in sorted(groups.items()):
            n = min(len(times) for times, _ in members)
            if n == 0:
                continue
            times = members[0][0][-n:]
            columns = [values[-n:] for _, values in members]
            combined = [sum(col) for col in zip(*columns)]
            if source.combine == "avg":
                combined = [value / len(columns) for value in combined]
            result.append((label, times, combined))
        return result


def _values(points: list[tuple[float, float]], rate: bool) -> tuple[list[float], list[float]]:
    if not rate:
        return [t for t, _ in points], [v for _, v in points]
    times, values = [], []
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t1 > t0 and v1 >= v0:  # a counter reset skips one interval
            times.append(t1)
            values.append((v1 - v0) / (t1 - t0))
    return times, values
