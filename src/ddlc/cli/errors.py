"""Every bad command line ends the same way: one line on stderr, exit code 2, no usage box, no traceback.

    argv -> typer/click (standalone_mode=False) -> _cli.UsageError  -> "error: ddlc train: No such option: --x"
                                                -> ddlc UserError    -> "error: --since: '1e9d' is too long ..."
                                                -> typer.Exit(code)  -> exit code

click prints a 5-6 line usage box for a usage error (and echoes an argument of any size into it); this module
prints the error alone, on one line, cut to MAX_MESSAGE characters.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn, Optional, Sequence

import typer

try:  # typer vendors its own click since 0.2x; older ones use click's classes
    from typer._click import exceptions as _cli
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as _cli  # type: ignore[no-redef]

from ddlc.errors import USAGE_EXIT_CODE, UserError

MAX_MESSAGE = 1000  # characters: two long paths and the advice fit (300 cut a real message before its remedy);
# still bounded for a hostile 100 KB argument


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` with every run of whitespace (newlines included) as one space, cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def fail(message: str, code: int = USAGE_EXIT_CODE) -> NoReturn:
    sys.stdout.flush()
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def run_app(app: Any, args: Optional[Sequence[str]] = None, prog_name: str = "ddlc") -> NoReturn:
    """Run a typer app as the console script does, with one-line errors."""
    try:
        code = app(args=list(args) if args is not None else None, prog_name=prog_name, standalone_mode=False)
    except _cli.NoArgsIsHelpError as error:
        error.show()  # `ddlc checkpoints` alone: the group's help is the useful answer
        raise SystemExit(error.exit_code) from None
    except _cli.UsageError as error:
        where = error.ctx.command_path if error.ctx is not None else prog_name
        fail(f"{where}: {error.format_message()}", error.exit_code)
    except _cli.ClickException as error:
        fail(error.format_message(), error.exit_code)
    except typer.Abort:
        fail("aborted", 130)
    except UserError as error:
        fail(str(error), error.exit_code)
    raise SystemExit(code if isinstance(code, int) else 0)
