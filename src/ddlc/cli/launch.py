"""`ddlc launch`: start a training job on every node of a hostfile (logic in ddlc.launch.multinode and
ddlc.launch.supervise)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ddlc.errors import UserError


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
    min_nodes: Optional[int] = typer.Option(None, "--min-nodes", help="torchrun: keep training while at least this "
                                            "many nodes are left (default: every host)"),
    max_nodes: Optional[int] = typer.Option(None, "--max-nodes", help="torchrun: most nodes in the job (default: "
                                            "the hosts listed; more lets hosts added to the hostfile join)"),
    max_restarts: Optional[int] = typer.Option(None, "--max-restarts", help="torchrun: node losses (and worker "
                                               "failures) survived before the job stops (default 3)"),
    job_id: Optional[str] = typer.Option(None, "--job-id", help="torchrun: rendezvous id (default: random)"),
    last_call: int = typer.Option(3, "--rdzv-last-call", help="torchrun: seconds a rendezvous waits for more nodes "
                                  "once --min-nodes have joined"),
    node_timeout: Optional[int] = typer.Option(None, "--node-timeout", help="seconds of silence after which a host "
                                               "counts as lost (default: 10 for torchrun, 45 otherwise)"),
    rejoin_interval: float = typer.Option(5.0, "--rejoin-interval", help="torchrun: seconds between probes of lost "
                                          "or left-out hosts"),
    stop_timeout: int = typer.Option(60, "--stop-timeout", help="on Ctrl-C/SIGTERM: seconds the workers get to "
                                     "checkpoint before they are killed"),
    health_check: bool = typer.Option(True, "--health/--no-health", help="run `ddlc health` on every host first "
                                      "(and before a node rejoins); failing hosts are left out"),
    health_arg: Optional[List[str]] = typer.Option(None, "--health-arg", help="extra `ddlc health` option, e.g. "
                                                   "--health-arg=--min-free-gb=50 (repeatable)"),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="torchrun: this machine's address for "
                                              "the rendezvous store; otherwise the first host"),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="default: a free port on this machine"),
    ssh_port: Optional[int] = typer.Option(None, "--ssh-port"),
    ssh_identity: Optional[str] = typer.Option(None, "--ssh-identity", "-i", help="ssh private key"),
    ssh_user: Optional[str] = typer.Option(None, "--ssh-user"),
    ssh_option: Optional[List[str]] = typer.Option(None, "--ssh-option", help="extra `ssh -o` option (repeatable)"),
    env: Optional[List[str]] = typer.Option(None, "--env", help="KEY=VALUE for every node (KEY= unsets a default)"),
    env_profile: str = typer.Option("aws-efa", "--env-profile", help="aws-efa | none (see docs/launch.md)"),
    instance_type: Optional[str] = typer.Option(None, "--instance-type", envvar="DDLC_INSTANCE_TYPE",
                                                help="trims the env profile to the type (e.g. no GPUDirect RDMA on "
                                                "p3dn); default: $DDLC_INSTANCE_TYPE"),
    python: Optional[str] = typer.Option(None, "--python", help="interpreter on the nodes (default: this one)"),
    workdir: Optional[str] = typer.Option(None, "--workdir", help="directory on the nodes (default: this one)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print each node's exact command and exit"),
    preflight_check: bool = typer.Option(True, "--preflight/--no-preflight", help="check ssh and engine first"),
) -> None:
    import os
    import sys

    from ddlc.launch.env import node_environment, parse_env_overrides
    from ddlc.launch.multinode import SSH, HealthGate, checked_ssh_options, plan_launch, preflight, resolve_hosts
    from ddlc.launch.supervise import ElasticRun, run_plan

    hosts = resolve_hosts(hostfile)
    elastic = _elastic_settings(engine, len(hosts), min_nodes, max_nodes, max_restarts, job_id, last_call)
    for name, value in (("--node-timeout", node_timeout), ("--stop-timeout", stop_timeout)):
        if value is not None and value < 1:
            raise UserError(f"{name} {value}: must be at least 1 second")
    if not 0 < rejoin_interval < float("inf"):  # nan would silently never probe lost hosts
        raise UserError(f"--rejoin-interval {rejoin_interval:g}: must be a positive number of seconds")
    for name, port, lowest in (("--master-port", master_port, 0), ("--ssh-port", ssh_port, 1)):
        if port is not None and not lowest <= port <= 65535:
            raise UserError(f"{name} {port}: not a TCP port ({lowest}-65535)")
    alive = node_timeout or (10 if elastic else 45)
    ssh = SSH(port=ssh_port, identity=ssh_identity, user=ssh_user, options=checked_ssh_options(ssh_option or ()),
              alive_timeout_s=alive)
    node_env = node_environment(env_profile, parse_env_overrides(env or []), os.environ, instance_type)
    interpreter = python or sys.executable
    plan = plan_launch(engine, hosts, script, script_args or [], nproc_per_node, master_addr, master_port,
                       interpreter, workdir, node_env, ssh, elastic)
    health_args = _checked_health_args(health_arg or [])
    from ddlc.launch.jobcheck import check_training_job, possible_world_sizes

    sizes = possible_world_sizes([h.slots for h in plan.hosts], plan.elastic.min_nodes if plan.elastic else None)
    check_training_job(script, script_args or [], sizes, workdir)  # before any ssh
    if dry_run:
        typer.echo(plan.describe(ssh))
        return
    health = HealthGate(health_check and preflight_check, health_args)
    left_out = preflight(plan, ssh, interpreter, health) if preflight_check else {}
    for host, why in left_out.items():
        typer.echo(f"ddlc launch: leaving out host {host}: health check failed: {why}")
    if preflight_check:  # a local checkpoint path must be one place every starting node shares
        from ddlc.launch.checkpoint_location import check_before_launch

        check_before_launch(plan, ssh, interpreter, script_args or [], exclude=set(left_out))
    floor = plan.elastic.min_nodes if plan.elastic else len(plan.hosts)
    if len(plan.hosts) - len(left_out) < floor:
        kind = f"--min-nodes {floor}" if plan.elastic else f"the {len(plan.hosts)} hosts a {engine} job needs"
        typer.echo(f"ddlc launch: {len(plan.hosts) - len(left_out)} healthy hosts, fewer than {kind}; not starting",
                   err=True)
        raise typer.Exit(1)
    if plan.elastic is not None:
        # Only a regular file can be read again: stdin and `<(…)` pipes were drained by the first read.
        rereadable = hostfile not in (None, "-") and Path(hostfile).is_file()
        reread = (lambda: resolve_hosts(hostfile)) if rereadable else None
        code = ElasticRun(plan, ssh, health, left_out=left_out, rejoin_interval_s=rejoin_interval,
                          stop_timeout_s=stop_timeout, read_hosts=reread).run()
    else:
        code = run_plan(plan, ssh, stop_timeout_s=stop_timeout)
    if code != 0:
        raise typer.Exit(code)


def _checked_health_args(args: List[str]) -> tuple[str, ...]:
    """`--health-arg` values must parse as `ddlc health` options here, not fail on every host later."""
    from ddlc.cli.health import register

    app = typer.Typer()
    register(app)
    command = typer.main.get_command(app)
    try:
        command.parse_args(command.context_class(command, info_name="health"), list(args))
    except Exception as error:  # the UsageError / BadParameter of the click that typer carries
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        raise UserError(f"--health-arg {' '.join(args)}: {message}") from None
    return tuple(args)


def _elastic_settings(engine: str, hosts: int, min_nodes: Optional[int], max_nodes: Optional[int],
                      max_restarts: Optional[int], job_id: Optional[str], last_call: int):
    """torchrun's elastic settings, checked (exit 2, one line); None for the fixed-size engines."""
    from ddlc.launch.multinode import Elastic

    if engine != "torchrun":
        given = [n for n, v in (("--min-nodes", min_nodes), ("--max-nodes", max_nodes),
                                ("--max-restarts", max_restarts), ("--job-id", job_id)) if v is not None]
        if given:
            raise UserError(f"{given[0]} needs --engine torchrun: {engine} jobs are fixed-size (docs/launch.md)")
        return None
    low = hosts if min_nodes is None else min_nodes
    high = max(hosts, low) if max_nodes is None else max_nodes
    restarts = 3 if max_restarts is None else max_restarts
    if low < 1:
        raise UserError(f"--min-nodes {low}: must be at least 1")
    if low > hosts:
        raise UserError(f"--min-nodes {low}: more than the {hosts} host{'s' if hosts != 1 else ''} listed")
    if high < low:
        raise UserError(f"--max-nodes {high}: fewer than --min-nodes {low}")
    if restarts < 0:
        raise UserError(f"--max-restarts {restarts}: must be 0 or more")
    if last_call < 1:
        raise UserError(f"--rdzv-last-call {last_call}: must be at least 1 second")
    if job_id is not None and not job_id.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"--job-id {job_id!r}: letters, digits, '-' and '_' only")
    return Elastic(low, high, restarts, job_id or "", last_call_s=last_call)
