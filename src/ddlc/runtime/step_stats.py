"""Two per-step figures beside the loss: how long a rank waited for its data, and its peak memory.

    Trainer.train_step: every micro-batch fetch (sampler.batch) -> DataWait (summed over the step's micro-batches)
    run_until: DataWait.take() per step          -> metrics.jsonl `data_wait_s` (rank 0), ddlc_train_data_wait_seconds_total
    run_until, on log steps: peak_memory(device) -> metrics.jsonl `peak_memory_bytes` (rank 0),
                                                    ddlc_train_host_memory_peak_bytes / ddlc_train_gpu_memory_peak_bytes

The data wait is the time spent producing the batch on the host (indexing, reading, collating), before the copy to
the device: a rank whose loader cannot keep up shows it here while its step time only looks slow.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import torch


class DataWait:
    """Seconds spent fetching batches since the last `take()`."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._seconds = 0.0

    def fetch(self, produce: Callable[..., Any], *args: Any) -> Any:
        started = self._clock()
        try:
            return produce(*args)
        finally:
            self._seconds += self._clock() - started

    def iterate(self, batches: Iterable[Any]) -> Iterator[Any]:
        """`batches`, with the time each `next()` takes counted (a lazy generator an engine consumes)."""
        iterator = iter(batches)
        while True:
            started = self._clock()
            try:
                batch = next(iterator)
            except StopIteration:
                self._seconds += self._clock() - started
                return
            self._seconds += self._clock() - started
            yield batch

    def take(self) -> float:
        seconds, self._seconds = self._seconds, 0.0
        return seconds


def host_memory_peak_bytes() -> int:
    """Peak resident set size of this process (getrusage: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def gpu_memory_peak_bytes(device: torch.device) -> Optional[int]:
    """Most memory PyTorch's allocator held on `device` since the process started; None off CUDA."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))
