"""`ddlc train`: a local torchrun job with a summary at the end; `ddlc stop`: stop one cleanly.

Exit codes of `ddlc train`: 0 finished (or already finished: nothing was rerun or rewritten), 2 bad input,
75 stopped cleanly with a checkpoint (signal, `ddlc stop`): run the same command to resume; 1 failed.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

if TYPE_CHECKING:
    from rich.table import Table

PREEMPTED_EXIT_CODE = 75


def register(app: typer.Typer) -> None:
    app.command(
        "train",
        context_settings={"allow_extra_args": False},
        help="Train locally under torchrun. Extra arguments are config overrides: training.max_steps=200. "
        "The same command resumes the same run (named after the config). Exit codes: 0 done, 2 bad input, "
        "75 stopped cleanly with a checkpoint (run the same command to resume), 1 failed.",
    )(train)
    app.command(
        "stop",
        help="Stop a run started on this machine: its workers checkpoint and exit; waits for the checkpoint.",
    )(stop)


def _resume_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in ["ddlc", *[a for a in argv if a != "--new-run"]])


def _file_bytes(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except OSError:
        return None


def train(
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted.key=value config overrides"),
    config: Optional[str] = typer.Option(None, "--config", "-c",
                                         help="YAML config file (default: ./config.yaml when present)"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="workers (default: GPUs, else 2)"),
    max_restarts: int = typer.Option(0, "--max-restarts", min=0,
                                     help="restart failed workers up to N times; they resume from the last checkpoint"),
    new_run: bool = typer.Option(False, "--new-run",
                                 help="start this run over from step 0; its old directory is kept as "
                                      "<run>.replaced-<time>"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the torchrun command and exit"),
) -> None:
    from ddlc.launch.local import (KILLED_EXIT_CODE, plan_local_job, read_summary, run_local_job,
                                   start_new_run)  # torch: import to run

    from rich.console import Console  # not imported by every ddlc command (`ddlc report`: ~30 ms)

    job = plan_local_job(config, overrides or [], nproc, max_restarts=max_restarts)
    console = Console()
    if dry_run:
        console.print(" ".join(job.command), soft_wrap=True, markup=False, highlight=False)
        return
    if new_run:
        aside = start_new_run(job)
        if aside is not None:
            console.print(f"ddlc: --new-run: the previous run {job.run_name} is kept in {aside}", markup=False,
                          highlight=False)
    resume = _resume_command(sys.argv[1:] if sys.argv[1:2] == ["train"] else ["train", *sys.argv[1:]])
    summary_path = job.run_dir / "summary.json"
    before = _file_bytes(summary_path)

    def on_stop() -> None:
        print(f"ddlc: stopping run {job.run_name}: the workers checkpoint, then exit (Ctrl-C again to kill them)",
              file=sys.stderr, flush=True)

    code = run_local_job(job, on_stop=on_stop)
    after = _file_bytes(summary_path)
    summary = read_summary(job.run_dir) if after is not None else None
    fresh = after is not None and after != before
    if code == 0 and not fresh:
        # The workers found the run finished and left everything as it was (they said so above).
        if summary is not None:
            console.print(_table(summary, f"run {job.run_name} (already finished; nothing rerun)"))
        return
    if fresh and summary and summary.get("preempted"):  # also when torchrun itself was killed: the workers saved
        if code != PREEMPTED_EXIT_CODE:
            console.print(f"ddlc: torchrun exited with code {code}; its workers stopped on their own", markup=False)
        console.print(f"ddlc: run {job.run_name} stopped cleanly at step {summary['steps']} "
                      f"(checkpoint saved in {summary.get('checkpoint_uri')}). Resume with:\n  {resume}",
                      markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(PREEMPTED_EXIT_CODE)
    if code == KILLED_EXIT_CODE:
        console.print(f"ddlc: run {job.run_name} killed (Ctrl-C twice) without a checkpoint of this stop; outputs so "
                      f"far in {job.run_dir}. Resume from the last checkpoint with:\n  {resume}", markup=False,
                      highlight=False, soft_wrap=True)
        raise typer.Exit(KILLED_EXIT_CODE)
    if code != 0 or not fresh or summary is None:
        if code == 2:
            raise typer.Exit(2)  # bad input: the workers printed the one-line reason
        what = "stopped without a confirmed checkpoint" if code == PREEMPTED_EXIT_CODE else "training failed"
        console.print(f"[red]{what}[/red] (exit code {code}); outputs so far in {job.run_dir}. "
                      f"Resume from the last checkpoint with:\n  {resume}", soft_wrap=True, highlight=False)
        raise typer.Exit(code if code > 0 and code != PREEMPTED_EXIT_CODE else 1)
    console.print(_table(summary, f"run {summary['run_name']}"))


def _table(summary: dict, title: str) -> Table:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # paths are shown whole, folded onto more lines if need be
    steps = summary.get("steps")
    table.add_row("steps", f"{steps} (resumed at {summary['start_step']})" if summary.get("start_step") else str(steps))
    first, final = summary.get("first_loss"), summary.get("final_loss")
    if first is not None and final is not None:
        table.add_row("loss", f"{first:.4f} -> {final:.4f}")
    if summary.get("tokens_per_second"):
        table.add_row("throughput", f"{summary['tokens_per_second']:,.0f} tokens/s on {summary['world_size']} workers")
    if summary.get("wall_time_s") is not None:
        table.add_row("wall time", f"{summary['wall_time_s']:.1f} s")
    table.add_row("run directory", str(summary.get("run_dir")))
    table.add_row("metrics", f"{summary.get('run_dir')}/metrics.jsonl")
    if summary.get("checkpoint_uri"):
        table.add_row("checkpoints", summary["checkpoint_uri"])
    return table


def stop(
    run: Optional[str] = typer.Argument(None, help="run name (default: the one run now running under --run-dir)"),
    run_dir: str = typer.Option("runs", "--run-dir", help="where runs live (monitoring.run_dir)"),
    timeout: float = typer.Option(900.0, "--timeout", min=1.0, help="seconds to wait for the checkpoint"),
) -> None:
    from ddlc.launch.stop import stop_run

    code = stop_run(Path(run_dir), run, timeout)
    raise typer.Exit(code)
