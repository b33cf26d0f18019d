"""Agreeing on the outcome of one phase of a save, with a timeout of its own, through the job's c10d key-value store.

    rank r: local step (may fail) --set  <prefix>/<phase>/<r> = {"ok", "error"} (+ /value)-->  store
            wait for every rank's key (timeout) --> first decision wins: compare_set(<prefix>/<phase>/decision)
            --> every rank sees the same "ok" or "rank k: <why>", plus every rank's value when ok
    rank 0 alone (the commit): claim(phase) (no timeout can fail it after this) --> COMMIT --> publish(outcome);
            the others await_outcome(phase)

Why not a gloo collective: a rank whose local step raised would skip the collective (the others then wait out the
group's whole timeout, 10 minutes by default), and after a collective times out its group cannot be trusted again.
Keys are unique per save and phase, so a late rank never pairs with a later save; the decision is written once
(compare-and-set), so a rank that arrives after the others gave up adopts their decision instead of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

DECIDED_OK = "ok"


class AgreementFailed(RuntimeError):
    """Some rank failed this phase, or did not report within the timeout: every rank gets the same message."""


@dataclass
class Agreement:
    store: Any  # torch.distributed.Store (the default group's TCPStore, behind torchrun's prefix)
    rank: int
    world_size: int
    prefix: str

    def exchange(self, phase: str, ok: bool, value: Any = None, error: Optional[str] = None,
                 timeout_s: float = 60.0, want_values: bool = True) -> list[Any]:
        """Publish this rank's outcome of `phase`; once every rank succeeded, return their values (when
        `want_values`, else []); otherwise raise AgreementFailed with the first failure, the same on every rank."""
        base = f"{self.prefix}/{phase}"
        if ok:
            self.store.set(f"{base}/{self.rank}/value", json.dumps(value))
        self.store.set(f"{base}/{self.rank}", json.dumps({"ok": ok, "error": error}))
        keys = [f"{base}/{r}" for r in range(self.world_size)]
        verdict = DECIDED_OK
        try:
            self.store.wait(keys, timedelta(seconds=timeout_s))
            for rank, key in enumerate(keys):
                report = json.loads(self.store.get(key))
                if not report["ok"]:
                    verdict = f"rank {rank}: {report.get('error') or 'failed'}"
                    break
        except Exception as exc:  # noqa: BLE001 (a store timeout: some rank never reported)
            missing = [r for r, key in enumerate(keys) if not _has(self.store, key)]
            verdict = (f"rank(s) {missing[:8]} did not report within {timeout_s:.0f}s" if missing
                       else f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
        decided = self.decide(phase, verdict)
        if decided != DECIDED_OK:
            raise AgreementFailed(decided)
        if not want_values:
            return []
        return [json.loads(self.store.get(f"{key}/value")) for key in keys]

    def decide(self, phase: str, verdict: str) -> str:
        """The phase's decision: `verdict` if this rank is first to decide, else the one already taken."""
        result = self.store.compare_set(f"{self.prefix}/{phase}/decision", "", verdict)
        return result.decode("utf-8") if isinstance(result, bytes) else str(result)

    def forget(self, phases: list[str]) -> None:
        """Delete this rank's own keys of `phases` (an old save's): the store lives as long as the job."""
        for phase in phases:
            for key in (f"{self.prefix}/{phase}/{self.rank}", f"{self.prefix}/{phase}/{self.rank}/value"):
                try:
                    self.store.delete_key(key)
                except Exception:  # noqa: BLE001 (never there, or the store is gone: nothing to free)
                    pass

    # -- a decision one rank takes (rank 0's commit) and the others wait for ------------------------------------
    CLAIMED = "in progress"

    def claim(self, phase: str) -> None:
        """Rank 0, before an irreversible step: from now on nobody may decide `phase` failed by timeout."""
        decided = self.decide(phase, self.CLAIMED)
        if decided != self.CLAIMED:  # the others gave up waiting before we got here
            raise AgreementFailed(decided)

    def publish(self, phase: str, verdict: str) -> None:
        self.store.set(f"{self.prefix}/{phase}/final", verdict)

    def await_outcome(self, phase: str, timeout_s: float) -> str:
        """Other ranks: the outcome rank 0 publishes; if it never claims the phase in time, decide it failed."""
        try:
            self.store.wait([f"{self.prefix}/{phase}/decision"], timedelta(seconds=timeout_s))
            decided = self.store.get(f"{self.prefix}/{phase}/decision").decode("utf-8")
        except Exception:  # noqa: BLE001 (nobody decided in time)
            try:
                decided = self.decide(phase, f"rank 0 did not commit within {timeout_s:.0f}s")
            except Exception as exc:  # noqa: BLE001 (the store itself is gone: rank 0 has left)
                return f"the job's store is unreachable ({type(exc).__name__}): rank 0's commit outcome is unknown"
        if decided != self.CLAIMED:
            return decided
        try:  # claimed: rank 0 is writing COMMIT (small files); its outcome follows
            self.store.wait([f"{self.prefix}/{phase}/final"], timedelta(seconds=timeout_s))
            return self.store.get(f"{self.prefix}/{phase}/final").decode("utf-8")
        except Exception:  # noqa: BLE001
            return f"rank 0 claimed the commit but reported no outcome within {timeout_s:.0f}s"


def _has(store: Any, key: str) -> bool:
    try:
        return bool(store.check([key]))
    except Exception:  # noqa: BLE001
        return False


def default_store() -> Optional[Any]:
    """The default process group's store (torchrun's TCPStore), or None without torch.distributed."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # noqa: BLE001 (an init method without a store)
        return None
