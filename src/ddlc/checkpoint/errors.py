"""Checkpoint failures that end a run with a one-line message and an exit code of their own (not a traceback).

- a save that the run cannot do without (the final one, or any blocking save the caller waits for) failed: the
  last committed checkpoint still stands; exit 74 (EX_IOERR);
- a load that did not finish (storage error, or it outlasted checkpoint.load_timeout_s): never treated as
  corruption, so no older checkpoint is loaded in its place; exit 74.
Refusals that are the user's to resolve (every checkpoint corrupt, another run's checkpoints in the URI) are
`UserError`s: exit 2.
"""

from __future__ import annotations

CHECKPOINT_IO_EXIT_CODE = 74  # sysexits EX_IOERR; 75 is the preemption code, 2 bad input


class CheckpointIOError(Exception):
    exit_code = CHECKPOINT_IO_EXIT_CODE


class CheckpointSaveError(CheckpointIOError):
    """A save failed on every rank together (the same message everywhere); nothing was committed."""


class CheckpointLoadError(CheckpointIOError):
    """A load failed for a reason that is not corruption (a timeout, a storage error)."""
