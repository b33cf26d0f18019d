"""`ddlc submit`, `ddlc jobs` and `ddlc jobs cancel ID`: training jobs through Slurm (logic in ddlc.scheduler)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ddlc.errors import UserError


def submit(
    script: str = typer.Argument(..., help="training script, e.g. train.py (the nodes see the same path)"),
    script_args: Optional[List[str]] = typer.Argument(None, help="arguments for the script, after --"),
    nodes: int = typer.Option(..., "--nodes", "-N", help="nodes for the job (one torchrun agent per node)"),
    gpus_per_node: int = typer.Option(0, "--gpus-per-node", help="GPUs per node (workers per node); 0: CPU "
                                      "nodes, one gloo worker each"),
    time_limit: Optional[str] = typer.Option(None, "--time", "-t", help="Slurm time limit: minutes, HH:MM:SS or "
                                             "D-HH:MM:SS; the job checkpoints when it is reached"),
    partition: Optional[str] = typer.Option(None, "--partition", "-p", help="default: the cluster's default"),
    instance_type: Optional[str] = typer.Option(None, "--instance-type",
                                                help="the nodes' instance type, for `ddlc jobs` cost (default: the "
                                                "cluster's workers' type from /etc/ddlc/cluster.env, or "
                                                "$DDLC_INSTANCE_TYPE)"),
    python: Optional[str] = typer.Option(None, "--python", help="interpreter on the nodes (default: this one)"),
    sbatch_option: Optional[List[str]] = typer.Option(None, "--sbatch", help="extra #SBATCH option, e.g. "
                                                      "--sbatch=--account=ml (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the batch script and exit"),
) -> None:
    """Submit SCRIPT to Slurm: ddlc submit --nodes 2 train.py -- --config config.yaml"""
    import sys

    from ddlc.scheduler.client import Slurm
    from ddlc.scheduler.submit import plan_submission
    from ddlc.scheduler.submit import submit as submit_job

    submission = plan_submission(script, script_args or [], nodes, gpus_per_node, time_limit, partition,
                                 Path.cwd(), python or sys.executable, sbatch_option or [])
    if dry_run:
        typer.echo(submission.script_text, nl=False)
        return
    job_id = submit_job(submission, Slurm(), instance_type or cluster_worker_type())
    typer.echo(f"submitted job {job_id}: run {submission.run.name}, output "
               f"{submission.run.directory}/slurm-{job_id}.out")


jobs_app = typer.Typer(help="Your Slurm jobs: state, nodes, elapsed time, newest checkpoint step, cost so far.",
                       invoke_without_command=True)


@jobs_app.callback()
def jobs(
    ctx: typer.Context,
    all_users: bool = typer.Option(False, "--all", "-a", help="every user's jobs"),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="this user's jobs (default: you)"),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from ddlc.scheduler.client import Slurm
    from ddlc.scheduler.jobs import list_jobs, table

    views = list_jobs(Slurm(), user, all_users)
    typer.echo(table(views))


@jobs_app.command("cancel")
def cancel(job_id: str = typer.Argument(..., help="the job id (`ddlc jobs` lists them)")) -> None:
    """Cancel a job: its workers get SIGTERM, save a checkpoint and stop (`scontrol requeue ID` resumes it)."""
    from ddlc.scheduler.client import Slurm

    if not job_id.replace("_", "").isdigit():
        raise UserError(f"job id {job_id!r}: expected a number (see `ddlc jobs`)")
    from ddlc.scheduler.submit import ACTIVE_STATES

    slurm = Slurm()
    rows = slurm.jobs(job_ids=[job_id])
    if not rows:
        raise UserError(f"job {job_id}: no such job (or it ended more than a few minutes ago)")
    if not any(row.state in ACTIVE_STATES for row in rows):
        raise UserError(f"job {job_id} has already ended ({rows[0].state}); nothing to cancel")
    slurm.cancel(job_id)
    typer.echo(f"cancelled job {job_id}: its workers checkpoint and stop")


def cluster_worker_type() -> Optional[str]:
    """On a cluster node: the workers' instance type its boot wrote (the head node is another type)."""
    import os

    from ddlc.ops.cluster_env import node_environment

    env = node_environment(os.environ)
    return env.get("DDLC_WORKER_INSTANCE_TYPE") or env.get("DDLC_INSTANCE_TYPE") or None


def register(app: typer.Typer) -> None:
    app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(submit)
    app.add_typer(jobs_app, name="jobs")
