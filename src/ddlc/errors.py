"""Errors that are the user's to fix: reported in one line, exit code 2, no traceback."""

from __future__ import annotations

import sys
from typing import NoReturn

USAGE_EXIT_CODE = 2
# Training diverged: training.max_nonfinite_steps steps in a row had a non-finite loss or gradient norm, or the
# parameters became non-finite (no checkpoint is written of such a state). sysexits' EX_DATAERR.
DIVERGED_EXIT_CODE = 65


class UserError(Exception):
    """Bad input (config, path, URI, hostfile...). The message names the offending field or path."""

    exit_code = USAGE_EXIT_CODE


def exit_with(error: UserError) -> NoReturn:
    """Print a one-line error and leave with the error's exit code (no traceback)."""
    sys.stdout.flush()
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(error.exit_code)


class DivergedError(UserError):
    """The loss or the parameters stopped being finite: one line, exit DIVERGED_EXIT_CODE, good checkpoints kept."""

    exit_code = DIVERGED_EXIT_CODE
