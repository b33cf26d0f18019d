"""`ddlc launch`: start a training job on every node of a hostfile (logic in ddlc.launch.multinode)."""

from __future__ import annotations

from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command(
        "launch",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        help="Start SCRIPT on every host: ddlc launch --engine torchrun --hostfile hosts train.py -- --config c.yaml",
    )(launch)


def launch(
    script: str = typer.Argument(..., help="training script, e.g. train.py (same path on every node)"),
    script_args: Optional[List[str]] = typer.Argument(None, help="arguments for the script, after --"),
    engine: str = typer.Option("torchrun", "--engine", help="torchrun | deepspeed | horovod"),
    hostfile: Optional[str] = typer.Option(
        None, "--hostfile", help="'host slots=N' / 'host:N' / 'host' per line ('-': stdin); default: Slurm's nodes"
    ),
    nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node", min=1, help="overrides each host's slots"),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="default: the first host"),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="default: a free port on this machine"),
    ssh_port: Optional[int] = typer.Option(None, "--ssh-port"),
    ssh_identity: Optional[str] = typer.Option(None, "--ssh-identity", "-i", help="ssh private key"),
    ssh_user: Optional[str] = typer.Option(None, "--ssh-user"),
    ssh_option: Optional[List[str]] = typer.Option(None, "--ssh-option", help="extra `ssh -o` option (repeatable)"),
    env: Optional[List[str]] = typer.Option(None, "--env", help="KEY=VALUE for every node (KEY= unsets a default)"),
    env_profile: str = typer.Option("aws-efa", "--env-profile", help="aws-efa | none (see docs/launch.md)"),
    python: Optional[str] = typer.Option(None, "--python", help="interpreter on the nodes (default: this one)"),
    workdir: Optional[str] = typer.Option(None, "--workdir", help="directory on the nodes (default: this one)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print each node's exact command and exit"),
    preflight_check: bool = typer.Option(True, "--preflight/--no-preflight", help="check ssh and engine first"),
) -> None:
    import os
    import sys

    from ddlc.launch.env import node_environment, parse_env_overrides
    from ddlc.launch.multinode import SSH, plan_launch, preflight, resolve_hosts, run_plan

    hosts = resolve_hosts(hostfile)
    ssh = SSH(port=ssh_port, identity=ssh_identity, user=ssh_user, options=tuple(ssh_option or ()))
    node_env = node_environment(env_profile, parse_env_overrides(env or []), os.environ)
    interpreter = python or sys.executable
    plan = plan_launch(engine, hosts, script, script_args or [], nproc_per_node, master_addr, master_port,
                       interpreter, workdir, node_env, ssh)
    from ddlc.launch.jobcheck import check_training_job

    check_training_job(script, script_args or [], plan.world_size, workdir)  # before any ssh
    if dry_run:
        typer.echo(plan.describe(ssh))
        return
    if preflight_check:
        preflight(plan, ssh, interpreter)
    code = run_plan(plan, ssh)
    if code != 0:
        raise typer.Exit(code)
