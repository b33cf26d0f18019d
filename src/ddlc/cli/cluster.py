"""`ddlc cluster status|connect|hosts|slurm-conf|refresh|down`: look at, into and tear down a deployed cluster
(logic in ddlc.infra.discovery, ddlc.scheduler.cluster_spec and ddlc.ops.teardown)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Optional

import typer

from ddlc.errors import UserError

cluster_app = typer.Typer(help="Inspect, connect to and tear down a deployed ddlc cluster.", no_args_is_help=True)

ENV_OPTION = typer.Option("prod", "--env", "-e", envvar="DDLC_ENVIRONMENT", help="Environment name in cdk.json.")
CLUSTER_OPTION = typer.Option(None, "--cluster", help="Cluster (stack) name; defaults to ddlc-<env>.")
REGION_OPTION = typer.Option(None, "--region", help="AWS region; defaults to cdk.json's, then your AWS config.")


def _target(env: str, cluster: Optional[str], region: Optional[str]) -> tuple[str, str]:
    """(cluster name, region) from the options, cdk.json in the working directory, and AWS config."""
    try:
        from ddlc.infra.discovery import resolve_region
    except ModuleNotFoundError as missing:
        raise UserError(f"`ddlc cluster` needs {missing.name}: pip install 'ddlc[infra]' (or just boto3)") from None
    from ddlc.infra.settings import read_cdk_context, stack_name_for

    if region is None and Path("cdk.json").is_file():
        environments = read_cdk_context("cdk.json").get("environments", {})
        if cluster is None and env not in environments:
            raise UserError(f"--env: unknown environment '{env}'; valid choices: {', '.join(sorted(environments))}")
        region = (environments.get(env) or {}).get("region")
    return cluster or stack_name_for(env), resolve_region(region)


@cluster_app.command()
def status(env: str = ENV_OPTION, cluster: Optional[str] = CLUSTER_OPTION, region: Optional[str] = REGION_OPTION) -> None:
    """Stack status, outputs and the nodes with their state and private IP."""
    from rich.console import Console
    from rich.table import Table

    from ddlc.infra.discovery import describe_stack, list_nodes

    name, region = _target(env, cluster, region)
    stack = describe_stack(name, region)
    nodes = list_nodes(name, region)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped or captured: room for full instance ids and IPs
    console.print(f"cluster [bold]{name}[/bold] in {region}: {stack.status}")
    for key, value in sorted(stack.outputs.items()):
        console.print(f"  {key}: {value}", highlight=False, soft_wrap=True)
    table = Table("instance", "role", "index", "type", "GPUs", "state", "private IP")
    for column in table.columns:
        column.overflow = "fold"  # ids and IPs are copied from here: never cut them short
    for node in nodes:
        table.add_row(node.instance_id, node.role, "" if node.index is None else str(node.index),
                      node.instance_type, str(node.gpus), node.state, node.private_ip or "-")
    console.print(table)


@cluster_app.command()
def connect(
    env: str = ENV_OPTION,
    cluster: Optional[str] = CLUSTER_OPTION,
    region: Optional[str] = REGION_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command instead of running it."),
) -> None:
    """Open a shell on the head node through SSM Session Manager (runs the stack's ConnectCommand)."""
    from ddlc.infra.discovery import describe_stack, has_aws_credentials

    name, region = _target(env, cluster, region)
    if dry_run and not has_aws_credentials():
        # A dry run only shows what would run: without credentials the head node's id cannot be looked up, so
        # show the command's shape and say where the id comes from instead of failing.
        typer.echo(f"aws ssm start-session --target <{name} HeadNodeId> --region {region}")
        typer.echo(f"note: no AWS credentials found, so the head node's instance id (stack output HeadNodeId of "
                   f"{name}) was not looked up", err=True)
        return
    command = describe_stack(name, region).connect_command
    if dry_run:
        typer.echo(command)
        return
    try:
        code = subprocess.call(shlex.split(command))
    except FileNotFoundError:
        raise UserError("the `aws` CLI is not on PATH: install AWS CLI v2 and the Session Manager plugin") from None
    raise typer.Exit(code)


@cluster_app.command()
def hosts(
    env: str = ENV_OPTION,
    cluster: Optional[str] = CLUSTER_OPTION,
    region: Optional[str] = REGION_OPTION,
    output: Path = typer.Option(Path("hostfile"), "--output", "-o", help="Where to write the hostfile."),
    expect: Optional[int] = typer.Option(None, "--expect", min=1, help="Fail unless this many workers run."),
) -> None:
    """Write a deepspeed/horovodrun hostfile for the running workers and print MASTER_ADDR."""
    import sys

    from ddlc.infra.discovery import write_hostfile

    name, region = _target(env, cluster, region)
    workers = write_hostfile(name, region, output, expect=expect)
    print(f"wrote {output}: {len(workers)} nodes, {sum(w.gpus for w in workers)} GPUs", file=sys.stderr)
    typer.echo(f"MASTER_ADDR={workers[0].private_ip}")


@cluster_app.command("slurm-conf")
def slurm_conf(
    cluster: str = typer.Option(..., "--cluster", envvar="DDLC_CLUSTER", help="Cluster (stack) name."),
    region: Optional[str] = REGION_OPTION,
    role: str = typer.Option(..., "--role", envvar="DDLC_ROLE", help="This node's role: head or worker."),
    instance_id: Optional[str] = typer.Option(None, "--instance-id", envvar="DDLC_INSTANCE_ID",
                                              help="This node's instance id (workers: their Slurm name)."),
    conf_dir: Path = typer.Option(Path("/etc/slurm"), "--conf-dir", help="Where slurm.conf and gres.conf go."),
    slurmd_defaults: Path = typer.Option(Path("/etc/default/slurmd"), "--slurmd-defaults",
                                         help="Workers: the slurmd unit's environment file (-N <name>)."),
    apply: bool = typer.Option(True, "--apply/--no-apply",
                               help="Start the daemon, or restart/reconfigure it when the files changed."),
) -> None:
    """Write this node's slurm.conf, gres.conf and cgroup.conf from discovery (run on the nodes by the boot
    script and the hostfile timer); tell Slurm only when something changed."""
    from ddlc.infra.discovery import list_nodes, resolve_region
    from ddlc.scheduler.cluster_spec import (ROLES, choose_process_tracking, cluster_spec, installed_slurm_version,
                                             node_files, node_name, own_node, sync_node)

    if role not in ROLES:
        raise UserError(f"--role: '{role}' is not one of {', '.join(ROLES)}")
    region = resolve_region(region)
    nodes = list_nodes(cluster, region)
    spec = cluster_spec(cluster, nodes, process_tracking=choose_process_tracking(installed_slurm_version()))
    own_name = None
    if role == "worker":
        if not instance_id:
            raise UserError("--instance-id: required on a worker (its Slurm node name comes from it)")
        own_name = node_name(own_node(nodes, instance_id, cluster))
    if role == "head" and apply:
        import socket
        import sys

        here = socket.gethostname().split(".")[0]
        if here != spec.controller:  # slurmctld only runs on the host SlurmctldHost names
            print(f"warning: this host is '{here}' but slurm.conf names the controller '{spec.controller}' (its EC2 "
                  "hostname): slurmctld will refuse to start here", file=sys.stderr)
    files = node_files(spec, conf_dir, slurmd_defaults=slurmd_defaults if role == "worker" else None,
                       own_name=own_name)
    result = sync_node(files, role=role, conf_dir=conf_dir, apply=apply)
    what = ", ".join(path.name for path in result.changed) or "nothing changed"
    done = "; ".join(" ".join(command) for command in result.commands) or "no daemon action"
    typer.echo(f"slurm: controller {spec.controller}, {len(spec.nodes)} nodes "
               f"({', '.join(n.name for n in spec.nodes)}): {what}; {done}")


@cluster_app.command()
def refresh(
    env: str = ENV_OPTION,
    cluster: Optional[str] = CLUSTER_OPTION,
    region: Optional[str] = REGION_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the equivalent AWS CLI command instead."),
) -> None:
    """Replace the GPU workers from the current launch template (AMI/driver rollover): an instance refresh that
    terminates before it launches, so it works inside a full capacity reservation. Checkpoint first."""
    from ddlc.infra.discovery import describe_stack, start_worker_refresh

    name, region = _target(env, cluster, region)
    group = describe_stack(name, region).worker_group
    if dry_run:
        typer.echo(shlex.join([
            "aws", "autoscaling", "start-instance-refresh", "--region", region, "--auto-scaling-group-name", group,
            "--strategy", "Rolling", "--preferences",
            '{"MinHealthyPercentage":0,"MaxHealthyPercentage":100,"SkipMatching":true}',
        ]))
        return
    refresh_id = start_worker_refresh(group, region)
    typer.echo(f"instance refresh {refresh_id} started on {group}; follow it with "
               f"`aws autoscaling describe-instance-refreshes --auto-scaling-group-name {group} --region {region}`")


@cluster_app.command()
def down(
    env: str = typer.Option(..., "--env", "-e", help="Environment name in cdk.json (required: a destroy has no default)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Skip the confirmation prompt (scripts)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted and retained, print the command."),
) -> None:
    """Delete the cluster (`npx cdk destroy`) after listing what is deleted and what is retained.

    Run from the repository root (where cdk.json is). Retained resources (prod: the checkpoint bucket, logs,
    Lustre, KMS key) survive and must be deleted by hand when no longer needed.
    """
    import sys

    from ddlc.infra.settings import stack_name_for
    from ddlc.ops.teardown import plan_teardown, validate_environment

    validate_environment(env)
    if not (yes or dry_run) and not sys.stdin.isatty():
        raise UserError(
            f"refusing to destroy {stack_name_for(env)} without confirmation (stdin is not a terminal): review "
            f"`ddlc cluster down --env {env} --dry-run`, then add --yes"
        )
    plan = plan_teardown(env)
    typer.echo(plan.describe())
    if dry_run:
        typer.echo("dry run: nothing deleted; the command would be:")
        typer.echo(plan.shell_command)
        return
    if not yes:
        typed = typer.prompt(f"Type {plan.stack_name} to delete it")
        if typed.strip() != plan.stack_name:
            typer.echo("aborted: nothing deleted", err=True)
            raise typer.Exit(1)
    try:
        code = subprocess.call(plan.command)
    except FileNotFoundError:
        raise UserError("`npx` is not on PATH: install Node.js and run `npm ci` in the repository root") from None
    if code == 0 and plan.retained:
        typer.echo("Retained (delete by hand when no longer needed): "
                   + ", ".join(f"{r.label} {r.path}" for r in plan.retained))
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.add_typer(cluster_app, name="cluster")
