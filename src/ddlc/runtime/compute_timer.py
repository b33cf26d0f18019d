"""Per-rank compute time up to the gradient all-reduce: what singles out a straggler (DDP).

A data-parallel step ends in the gradient all-reduce, which waits for the slowest rank, so every rank's step time
is the same and cannot name the slow one. What differs is how long each rank works before it joins the
collective. DDP hands each gradient bucket to a communication hook as soon as this rank's backward produced it;
this timer registers a hook that notes the time, then all-reduces exactly as DDP's default does (average over the
ranks). Per step: seconds from the step's start until the last bucket was handed over (data loading, forward and
backward of every micro-batch), before any wait for the other ranks.

On CUDA the marks are CUDA events on the compute stream (the GPU time, not the kernel launch time), read on log
steps, after the loop synchronised the device anyway. Other strategies (FSDP, DeepSpeed, Horovod) and a single
rank have no DDP hook: no measurement, and the straggler rule falls back to the step time.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel


class ComputeTimer:
    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.supported = isinstance(model, DistributedDataParallel)
        self._start: Any = None
        self._last: Any = None
        if self.supported:
            model.register_comm_hook(self, _timed_allreduce)

    def _mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start_step(self) -> None:
        if self.supported:
            self._start, self._last = self._mark(), None

    def bucket_ready(self) -> None:
        self._last = self._mark()

    def end_step(self) -> Optional[tuple[Any, Any]]:
        """The step's marks (read them with `seconds` once the device caught up); None: no all-reduce this step."""
        if not self.supported or self._last is None:
            return None
        return self._start, self._last

    def seconds(self, marks: Optional[tuple[Any, Any]]) -> Optional[float]:
        if marks is None:
            return None
        start, last = marks
        if self.cuda:
            return start.elapsed_time(last) / 1000.0  # both events are complete: the loop synchronised
        return last - start


def _timed_allreduce(timer, bucket):  # no annotations: DDP checks them, and this module's are strings
    """DDP's default reduction (average over the default group), after noting when this rank got here."""
    timer.bucket_ready()
    return allreduce_hook(None, bucket)
