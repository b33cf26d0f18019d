"""torchrun's elastic agent, as `ddlc launch` runs it on every node: `python -m ddlc.launch.torchrun_agent ARGS`
is `python -m torch.distributed.run ARGS`, except that being stopped by a signal is not an error.

torchrun turns SIGTERM/SIGINT into a SignalException that it lets escape with a traceback, after it has passed
the signal on to its workers (which checkpoint and exit 75). Stopping a job is routine here (Ctrl-C, preemption,
the launcher stopping a node), so this prints one line and exits 128 + the signal number instead.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as stopped:
        name = signal.Signals(stopped.sigval).name
        print(f"torchrun: stopped by {name}; its workers were passed the signal", file=sys.stderr, flush=True)
        return 128 + int(stopped.sigval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
