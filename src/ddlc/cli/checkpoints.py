"""`ddlc checkpoints list|show|verify|prune|export URI`."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table


checkpoints = typer.Typer(help="Inspect and maintain checkpoints (local path, file:// or s3://).", no_args_is_help=True)
console = Console()
ENDPOINT = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")


def register(app: typer.Typer) -> None:
    app.add_typer(checkpoints, name="checkpoints")


def _human(size: Optional[int]) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


@checkpoints.command("list")
def list_(uri: str, endpoint_url: Optional[str] = ENDPOINT) -> None:
    """Every checkpoint under URI: step, committed or not, size, time; `*` marks the latest pointer."""
    from ddlc.checkpoint import catalog  # torch is heavy: import only when a command runs

    store = catalog.open_store(uri, endpoint_url)
    rows = catalog.list_checkpoints(store)
    table = Table(title=store.display())
    for column in ("", "checkpoint", "step", "state", "size", "saved"):
        table.add_column(column)
    for row in rows:
        saved = datetime.fromtimestamp(row.manifest.created).strftime("%Y-%m-%d %H:%M:%S") if row.manifest else "-"
        state = "committed" if row.committed else "[yellow]incomplete[/yellow]"
        table.add_row("*" if row.is_latest else "", row.name, str(row.step), state, _human(row.size_bytes), saved)
    console.print(table)
    if not rows:
        console.print("no checkpoints")


@checkpoints.command()
def show(uri: str, which: Optional[str] = typer.Argument(None, help="step, step-NNNNNNNN or latest"),
         endpoint_url: Optional[str] = ENDPOINT) -> None:
    """The commit manifest of one checkpoint (default: latest) as JSON."""
    from ddlc.checkpoint import catalog  # torch is heavy: import only when a command runs

    store = catalog.open_store(uri, endpoint_url)
    name = catalog.resolve(store, which)
    manifest = catalog.read_manifest(store, name)
    if manifest is None:
        console.print(f"{store.display(name)}: not committed")
        raise typer.Exit(1)
    typer.echo(manifest.to_json())


@checkpoints.command()
def verify(uri: str, which: Optional[str] = typer.Argument(None, help="step or name (default: all)"),
           size_only: bool = typer.Option(False, "--size-only", help="skip SHA-256, check sizes only"),
           endpoint_url: Optional[str] = ENDPOINT) -> None:
    """Check files against their manifests. Exit 1 if any checkpoint is incomplete or corrupt."""
    from ddlc.checkpoint import catalog  # torch is heavy: import only when a command runs

    store = catalog.open_store(uri, endpoint_url)
    names = [catalog.resolve(store, which)] if which else [r.name for r in catalog.list_checkpoints(store)]
    bad = 0
    for name in names:
        result = catalog.verify(store, name, check_hashes=not size_only)
        bad += not result.ok
        mark = "[green]OK[/green]  " if result.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {name}: {result.summary()}", markup=True, highlight=False)
    if bad:
        raise typer.Exit(1)


@checkpoints.command("prune")
def prune_(uri: str, keep_last: int = typer.Option(..., "--keep-last", min=1),
           keep_every: Optional[int] = typer.Option(None, "--keep-every", min=1),
           dry_run: bool = typer.Option(False, "--dry-run"), endpoint_url: Optional[str] = ENDPOINT) -> None:
    """Delete old checkpoints (never the newest committed one) and debris of crashed saves."""
    from ddlc.checkpoint import catalog  # torch is heavy: import only when a command runs

    store = catalog.open_store(uri, endpoint_url)
    removed = catalog.prune(store, keep_last, keep_every, dry_run)
    verb = "would delete" if dry_run else "deleted"
    for name in removed:
        console.print(f"{verb} {store.display(name)}", highlight=False)
    console.print(f"{verb} {len(removed)} checkpoint(s)")


@checkpoints.command("export")
def export_(uri: str, output: Path = typer.Option(..., "--output", "-o", help=".pt or .safetensors"),
            which: Optional[str] = typer.Argument(None, help="step or name (default: latest)"),
            fmt: str = typer.Option("auto", "--format", help="auto | torch | safetensors"),
            endpoint_url: Optional[str] = ENDPOINT) -> None:
    """Write the model weights of one checkpoint as a single file for inference."""
    from ddlc.checkpoint import catalog  # torch is heavy: import only when a command runs

    store = catalog.open_store(uri, endpoint_url)
    name, count = catalog.export(store, which, output, fmt)
    console.print(f"exported {count} tensors (every parameter and buffer, by name) from "
                  f"{store.display(name)} to {output}", highlight=False)
