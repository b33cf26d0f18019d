"""One save's phases and how every rank agrees on each (used by checkpointer.Checkpointer).

    SaveJob.phase(name, local step)  --> this rank's value or error --Agreement.exchange--> all ranks' values,
                                         or AgreementFailed (the same first failure) on every rank
    SaveJob.commit (rank 0)          --> prepare manifest, claim the decision, write COMMIT, publish the outcome
    SaveJob.await_commit (others)    --> rank 0's outcome, or failed if it never claimed in time
    describe(exception)              --> one line naming the root cause (DCP wraps each rank's exception)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch.distributed.checkpoint.api import CheckpointException

from ddlc.checkpoint.agreement import Agreement, AgreementFailed
from ddlc.checkpoint.write_digests import root_cause


@dataclass
class SaveJob:
    """One save's inputs and how far it got; runs each phase's local step and the agreement on its outcome."""

    directory: str
    layout: Optional[str]
    small_files: dict
    stats: object  # SaveStats
    started: float
    agreement: Optional[Agreement]
    attempted_write: bool = False

    def phase(self, index: int, name: str, step: Callable[[], object], timeout_s: float,
              want_values: bool = True) -> list:
        """Run this rank's `step`, then agree with every rank: their values, or AgreementFailed everywhere."""
        try:
            value, ok, error = step(), True, None
        except Exception as exc:  # noqa: BLE001 (reported to every rank, raised below on all of them)
            value, ok, error = None, False, describe(exc)
            if self.agreement is None:
                raise
        if self.agreement is None:
            return [value]
        return self.agreement.exchange(f"{index}-{name}", ok, value, error, timeout_s, want_values)

    def commit(self, name: str, prepare: Callable[[], object], write: Callable[[object], None]) -> None:
        """Rank 0: `prepare` (may take long), claim the decision, `write` (irreversible), publish the outcome."""
        if self.agreement is None:
            write(prepare())
            return
        try:
            prepared = prepare()
        except Exception as exc:  # noqa: BLE001
            self.agreement.decide(name, f"rank 0: {type(exc).__name__}: {first_line(exc)}")
            raise
        self.agreement.claim(name)  # raises if the others already gave up: then nothing is written
        try:
            write(prepared)
        except Exception as exc:  # noqa: BLE001
            self.agreement.publish(name, f"rank 0: {type(exc).__name__}: {first_line(exc)}")
            raise
        self.agreement.publish(name, "ok")

    def await_commit(self, name: str, timeout_s: float) -> None:
        if self.agreement is not None:
            verdict = self.agreement.await_outcome(name, timeout_s)
            if verdict != "ok":
                raise AgreementFailed(verdict)


def first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:300] if text else ""


def describe(exc: BaseException) -> str:
    """One line naming the root cause: DCP wraps each rank's exception in a CheckpointException."""
    if isinstance(exc, AgreementFailed):
        return first_line(exc)
    if isinstance(exc, CheckpointException) and exc.failures:
        rank, failure = sorted(exc.failures.items())[0]
        cause = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(cause, BaseException):
            cause = root_cause(cause)
            return f"rank {rank}: {type(cause).__name__}: {first_line(cause)}"
    exc = root_cause(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"
