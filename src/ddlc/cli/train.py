"""`ddlc train`: start a local torchrun job (filled in with the runtime)."""

import typer


def register(app: typer.Typer) -> None:
    pass
