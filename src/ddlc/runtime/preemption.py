"""Graceful stop on SIGTERM (spot interruption, `kill`, torchrun shutdown) and SIGUSR1 (scheduler preemption),
and, with `watch_parent`, when the launcher's agent that started this worker dies (kill -9 of torchrun): the
worker is then an orphan nobody will collect, so it checkpoints and leaves instead of training on.

The handler only sets a flag. After each step (every `world_size // 64` steps beyond 64 ranks) the ranks agree on it (one tiny all-reduce on a private gloo
group, so GPU streams never wait on it); then every rank checkpoints and leaves with PREEMPTED_EXIT_CODE.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

import torch
import torch.distributed as dist

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" — the job stopped cleanly and can resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # Ctrl-C: stop cleanly; a second Ctrl-C: now


# Ranks per step of delay: up to this many ranks agree after every step; beyond, every world_size // this steps
# (at 1024 ranks, every 16th step: still seconds, well inside a spot interruption's two-minute notice).
RANKS_PER_CHECK = 64


def check_every(world_size: int) -> int:
    return max(1, world_size // RANKS_PER_CHECK)


class PreemptionWatcher:
    def __init__(self, world_size: int = 1, signals=STOP_SIGNALS, every: Optional[int] = None,
                 watch_parent: bool = False):
        self.requested_by: Optional[int] = None
        self.every = every or check_every(world_size)
        self._calls = 0
        self.parent_died = False
        self._parent = os.getppid() if watch_parent else None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        self._group = dist.new_group(backend="gloo") if dist.is_initialized() and world_size > 1 else None
        self._flag = torch.zeros(1, dtype=torch.int32)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.requested_by == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop without the checkpoint
        self.requested_by = signum

    def should_stop(self) -> bool:
        """True on every rank as soon as any rank got a stop signal or lost its launcher (checked together every
        `every` calls: the same calls on every rank, so the all-reduce always pairs up)."""
        self._calls += 1
        if self._calls % self.every:
            return False
        if self._parent is not None and not self.parent_died and os.getppid() != self._parent:
            self.parent_died = True  # reparented: the agent is gone (a cheap syscall, once per check)
        # 2: a launcher died somewhere (every rank then says so), 1: a signal, 0: carry on
        self._flag[0] = 2 if self.parent_died else (0 if self.requested_by is None else 1)
        if self._group is not None:
            dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(self._flag[0])

    def reason(self) -> str:
        if self.requested_by is not None:
            return f"signal {signal.Signals(self.requested_by).name}"
        if self.parent_died or int(self._flag[0]) == 2:
            return "its launcher died"
        return "stop requested on another rank"

    @property
    def stopped_by_peer(self) -> bool:
        """Stopping only because another rank did (no signal here, this rank's launcher alive)."""
        return self.requested_by is None and not self.parent_died and int(self._flag[0]) == 1

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


AGENT_NOTICE_S = 2.0  # > 2 polls of the agent's monitor loop (`ddlc launch` polls every 0.5 s, bare torchrun 0.1 s)


def let_the_agent_notice(seconds: float = AGENT_NOTICE_S) -> None:
    """Under an elastic torchrun agent, a rank that stopped because a peer did waits a moment before it exits.

    When a node joins a running job, every agent stops its own workers (SIGTERM) for the next rendezvous, each at
    its next poll. Workers on a node whose agent has not polled yet follow their peers' stop and exit 75 first:
    that agent then counts a failure (one of --max-restarts spent on a routine rejoin) instead of a membership
    change. The agent's SIGTERM, with the handlers put back by now, ends this wait: it is restarting us anyway.
    """
    import os
    import sys
    import time

    # Only where nodes can join mid-job: `ddlc launch --min-nodes` below the host count says so in the workers'
    # environment. Elsewhere a peer's stop is a plain stop, and the agent stops the job on the first exit.
    if "DDLC_ELASTIC_NODES" not in os.environ or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(seconds)
