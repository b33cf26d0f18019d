"""`python -m ddlc.launch.torchrun ARGS`: torchrun (same arguments), with its endings told apart and told plainly.

    ddlc train ──SIGTERM──> this agent ──SIGTERM──> workers: checkpoint, exit 75 ──> exit 75, one line, no traceback
       (dies: kill -9) ──PR_SET_PDEATHSIG──┘
    workers exit 75 by themselves (SIGUSR1, spot notice)  ──────────────────────────> exit 75
    workers exit 2 (bad input, one line already printed)  ──────────────────────────> exit 2
    any other failure                                     ──> one line naming the rank and its exit code, exit 1

Bare torchrun reports every one of these as "ChildFailedError ... FAILED" with a traceback and exit code 1.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from typing import Optional, Sequence

PREEMPTED_EXIT_CODE = 75  # the workers' own code (ddlc.runtime.preemption); not imported: that pulls in torch early
USAGE_EXIT_CODE = 2
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Linux: get `sig` when the process that started us dies, so a killed `ddlc train` still stops cleanly."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the workers still notice their agent's death themselves


def exit_code_for(codes: Sequence[Optional[int]]) -> int:
    """One exit code for a worker group's exit codes (None or negative: killed by a signal)."""
    if codes and all(code == PREEMPTED_EXIT_CODE for code in codes):
        return PREEMPTED_EXIT_CODE
    if codes and all(code == USAGE_EXIT_CODE for code in codes):
        return USAGE_EXIT_CODE
    return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    die_with_parent()
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        run(args)
    except SignalException as stop:
        # The workers got the same signal, checkpointed and left (or were killed after --shutdown-timeout);
        # the caller checks the run's summary to tell which.
        print(f"ddlc: torchrun stopped its workers on {signal.Signals(stop.sigval).name}", file=sys.stderr, flush=True)
        return PREEMPTED_EXIT_CODE
    except ChildFailedError as failed:
        codes = [failure.exitcode for failure in failed.failures.values()]
        code = exit_code_for(codes)
        if code == 1:
            rank, first = min(failed.failures.items())
            how = (f"signal {signal.Signals(-first.exitcode).name}" if first.exitcode and first.exitcode < 0
                   else f"exit code {first.exitcode}")
            print(f"ddlc: worker rank {rank} failed ({how}); its output is above", file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
