"""`ddlc checkpoints list|show|verify|prune|export URI`."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ddlc.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console


checkpoints = typer.Typer(help="Inspect and maintain checkpoints (local path, file:// or s3://).", no_args_is_help=True)
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


@lru_cache(maxsize=None)
def _console() -> Console:
    # rich is imported when a checkpoints command prints, not by every ddlc command (`ddlc report`: ~30 ms)
    from rich.console import Console

    return Console()


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


@checkpoints.command("list")
def list_(uri: str, endpoint_url: Optional[str] = ENDPOINT,
          memory_dir: str = typer.Option("/dev/shm/ddlc", "--memory-dir",
                                         help="the run's checkpoint.memory_dir: its memory-tier snapshots on this "
                                              "node are listed too")) -> None:
    """Every checkpoint under URI: step, committed or not, size, time; `*` marks the latest pointer. Then the
    run's memory-tier snapshots on this node, if any."""
    from ddlc.checkpoint import catalog  # torch is heavy: import only when a command runs

    store = catalog.open_store(uri, endpoint_url)
    rows = catalog.list_checkpoints(store)
    _print_table(store.display(), rows)
    if not rows:
        _console().print("no checkpoints")
    tier = catalog.memory_tier_of(store, rows, memory_dir)
    if tier is not None:
        copies = catalog.peer_copies_of(tier)
        # A multi-node run's memory tier: each node holds its own ranks' files of a snapshot; COMMIT is on rank 0's.
        other_node = "no COMMIT here (multi-node: this node's files; COMMIT is on rank 0's node)" if copies else None
        _print_table(f"memory tier (this node): {tier.display()}", catalog.list_checkpoints(tier), other_node)
        for node, copy in copies:
            _print_table(f"memory tier, copy of node {node}'s snapshots (peer replica): {copy.display()}",
                         catalog.list_checkpoints(copy), f"node {node}'s files (COMMIT is on rank 0's node)")


def _print_table(title: str, rows: list, uncommitted: Optional[str] = None) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("", "checkpoint", "step", "state", "size", "saved"):
        table.add_column(column, overflow="fold")
    for row in rows:
        saved = datetime.fromtimestamp(row.manifest.created).strftime("%Y-%m-%d %H:%M:%S") if row.manifest else "-"
        if row.committed:
            state = "committed"
        elif row.reason:
            state = f"[red]unreadable[/red]: {escape(_one_line(row.reason))}"
        else:
            state = escape(uncommitted) if uncommitted else "[yellow]incomplete[/yellow]"
        table.add_row("*" if row.is_latest else "", row.name, str(row.step), state, _human(row.size_bytes), saved)
    _console().print(table)


@checkpoints.command()
def show(uri: str, which: Optional[str] = typer.Argument(None, help="step, step-NNNNNNNN or latest"),
         endpoint_url: Optional[str] = ENDPOINT) -> None:
    """The commit manifest of one checkpoint (default: latest) as JSON."""
    from ddlc.checkpoint import catalog  # torch is heavy: import only when a command runs

    store = catalog.open_store(uri, endpoint_url)
    name = catalog.resolve(store, which)
    commit = catalog.read_commit(store, name)
    if commit.manifest is None:
        state = f"unreadable COMMIT: {_one_line(commit.reason)}" if commit.reason else "not committed"
        typer.echo(f"{store.display(name)}: {state}", err=True)
        raise typer.Exit(1)
    typer.echo(commit.manifest.to_json())


@checkpoints.command()
def verify(uri: str, which: Optional[str] = typer.Argument(None, help="step or name (default: all)"),
           size_only: bool = typer.Option(False, "--size-only", help="skip SHA-256, check sizes only"),
           endpoint_url: Optional[str] = ENDPOINT) -> None:
    """Check files against their manifests. Exit 1 if any checkpoint is incomplete, unreadable or corrupt."""
    from ddlc.checkpoint import catalog  # torch is heavy: import only when a command runs

    store = catalog.open_store(uri, endpoint_url)
    names = [catalog.resolve(store, which)] if which else [r.name for r in catalog.list_checkpoints(store)]
    bad = 0
    for name in names:
        result = catalog.verify(store, name, check_hashes=not size_only)
        bad += not result.ok
        mark = "[green]OK[/green]  " if result.ok else "[red]FAIL[/red]"
        _console().print(f"{mark} {name}: {escape(_one_line(result.summary()))}", markup=True, highlight=False)
    if bad:
        raise typer.Exit(1)


@checkpoints.command("prune")
def prune_(uri: str, keep_last: int = typer.Option(..., "--keep-last", min=1),
           keep_every: Optional[int] = typer.Option(None, "--keep-every", min=1),
           verify_hashes: bool = typer.Option(False, "--verify", help="SHA-256 every file first (default: sizes)"),
           dry_run: bool = typer.Option(False, "--dry-run", help="show what would be deleted and kept; delete nothing"),
           endpoint_url: Optional[str] = ENDPOINT) -> None:
    """Delete old checkpoints and debris of crashed saves, after verifying them: never one of the newest
    `keep_last` that verify, never an unreadable one; `latest` is moved first if it named a deleted one."""
    from ddlc.checkpoint import catalog  # torch is heavy: import only when a command runs

    store = catalog.open_store(uri, endpoint_url)
    decisions = catalog.prune(store, keep_last, keep_every, dry_run, check_hashes=verify_hashes)
    verb = "would delete" if dry_run else "deleted"
    for decision in decisions:
        action = verb if decision.delete else ("would keep" if dry_run else "kept")
        _console().print(f"{action} {store.display(decision.entry.name)}: {escape(_one_line(decision.why))}",
                      highlight=False)
    removed = sum(d.delete for d in decisions)
    verified = sum(d.entry.state == "verified" and not d.delete for d in decisions)
    _console().print(f"{verb} {removed} checkpoint(s); {verified} verified checkpoint(s) remain", highlight=False)


@checkpoints.command("export")
def export_(uri: str, output: Path = typer.Option(..., "--output", "-o", help=".pt or .safetensors"),
            which: Optional[str] = typer.Argument(None, help="step or name (default: latest)"),
            fmt: str = typer.Option("auto", "--format", help="auto | torch | safetensors"),
            endpoint_url: Optional[str] = ENDPOINT) -> None:
    """Write the model weights of one checkpoint as a single file for inference."""
    from ddlc.checkpoint import catalog  # torch is heavy: import only when a command runs

    if fmt not in catalog.EXPORT_FORMATS:
        raise UserError(f"--format: {fmt[:40]!r} is not one of {', '.join(catalog.EXPORT_FORMATS)}")
    store = catalog.open_store(uri, endpoint_url)
    name, count = catalog.export(store, which, output, fmt)
    _console().print(f"exported {count} tensors (every parameter and buffer, by name) from "
                  f"{store.display(name)} to {output}", highlight=False)
