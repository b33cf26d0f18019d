"""`ddlc train`: a local torchrun job with a summary at the end."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table



def register(app: typer.Typer) -> None:
    app.command(
        "train",
        context_settings={"allow_extra_args": False},
        help="Train locally under torchrun. Extra arguments are config overrides: training.max_steps=200",
    )(train)


def train(
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted.key=value config overrides"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config file"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="workers (default: GPUs, else 2)"),
    max_restarts: int = typer.Option(0, "--max-restarts", min=0,
                                     help="restart failed workers up to N times; they resume from the last checkpoint"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the torchrun command and exit"),
) -> None:
    from ddlc.launch.local import plan_local_job, read_summary, run_local_job  # torch: import only to run

    job = plan_local_job(config, overrides or [], nproc, max_restarts=max_restarts)
    console = Console()
    if dry_run:
        console.print(" ".join(job.command), soft_wrap=True, markup=False, highlight=False)
        return
    code = run_local_job(job)
    summary = read_summary(job.run_dir)
    if code != 0 or summary is None:
        console.print(f"[red]training failed[/red] (exit code {code}); outputs so far in {job.run_dir}")
        raise typer.Exit(code or 1)
    table = Table(title=f"run {summary['run_name']}", show_header=False)
    table.add_row("steps", f"{summary['steps']} (resumed at {summary['start_step']})" if summary["start_step"] else str(summary["steps"]))
    if summary.get("first_loss") is None or summary.get("final_loss") is None:
        # Resumed from a checkpoint already at max_steps: nothing to train, no loss to show.
        table.add_row("loss", "no step trained (the checkpoint already reached training.max_steps)")
    else:
        table.add_row("loss", f"{summary['first_loss']:.4f} -> {summary['final_loss']:.4f}")
    table.add_row("throughput", f"{summary['tokens_per_second']:,.0f} tokens/s on {summary['world_size']} workers")
    table.add_row("wall time", f"{summary['wall_time_s']:.1f} s")
    table.add_row("run directory", summary["run_dir"])
    table.add_row("metrics", f"{summary['run_dir']}/metrics.jsonl")
    if summary.get("checkpoint_uri"):
        table.add_row("checkpoints", summary["checkpoint_uri"])
    console.print(table)
