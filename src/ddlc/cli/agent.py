"""`ddlc agent` (the per-node metrics agent) and `ddlc monitor ...` (Prometheus config and alert rules)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Optional

import typer

from ddlc.errors import UserError


def agent(
    host: str = typer.Option("127.0.0.1", help="Address to serve /metrics on (0.0.0.0 for every interface)."),
    port: int = typer.Option(9400, help="Port to serve /metrics on; 0 picks a free one."),
    node: Optional[str] = typer.Option(None, help="Value of the `node` label (default: the host name)."),
    checkpoint_path: Optional[Path] = typer.Option(None, help="Report disk use of the volume holding this path."),
    cloudwatch: bool = typer.Option(False, "--cloudwatch/--no-cloudwatch", help="Also publish to CloudWatch."),
    namespace: str = typer.Option("DDLC", help="CloudWatch namespace."),
    interval: float = typer.Option(60.0, help="Seconds between CloudWatch publishes."),
    region: Optional[str] = typer.Option(None, help="AWS region for CloudWatch (default: the AWS config)."),
    endpoint_url: Optional[str] = typer.Option(None, help="CloudWatch endpoint (a VPC endpoint, or a local test server)."),
    infiniband_root: Path = typer.Option(Path("/sys/class/infiniband"), help="Where EFA devices appear in sysfs."),
    health_interval: float = typer.Option(0.0, "--health-interval", min=0, help="Run `ddlc health` every this many "
                                          "seconds and export ddlc_node_healthy{check} (0: off)."),
    unhealthy_after: int = typer.Option(3, "--unhealthy-after", min=1, help="Failed health runs in a row before "
                                        "--replace-unhealthy acts."),
    replace_unhealthy: bool = typer.Option(False, "--replace-unhealthy/--no-replace-unhealthy", help="Then mark "
                                           "this EC2 instance Unhealthy in its Auto Scaling group (replaced)."),
    min_free_gb: float = typer.Option(10.0, "--min-free-gb", min=0, help="Health: free disk required."),
    instance_type: Optional[str] = typer.Option(None, "--instance-type", envvar="DDLC_INSTANCE_TYPE", help="Export "
                                                "this node's hourly price (price table) for the idle cost view."),
    imds_url: str = typer.Option("http://169.254.169.254", "--imds-url", hidden=True),
    autoscaling_endpoint_url: Optional[str] = typer.Option(None, "--autoscaling-endpoint-url", hidden=True),
    slurm_metrics: bool = typer.Option(False, "--slurm-metrics/--no-slurm-metrics", help="Also export Slurm's "
                                       "queue and node states (squeue/sinfo): on one node only, the head."),
) -> None:
    """Serve this node's GPU, network/EFA, CPU, memory and disk metrics for Prometheus."""
    from ddlc.monitor.agent import AgentSettings, run_agent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = AgentSettings(
        host=host, port=port, node=node or socket.gethostname(), checkpoint_path=checkpoint_path,
        infiniband_root=infiniband_root, cloudwatch=cloudwatch, cloudwatch_namespace=namespace,
        cloudwatch_interval_s=interval, region=region, cloudwatch_endpoint_url=endpoint_url,
        health_interval_s=health_interval, unhealthy_after=unhealthy_after, replace_unhealthy=replace_unhealthy,
        health_options=_health_options(min_free_gb, checkpoint_path), imds_url=imds_url,
        autoscaling_endpoint_url=autoscaling_endpoint_url, instance_type=instance_type, slurm_metrics=slurm_metrics,
    )
    run_agent(settings, on_ready=lambda running: typer.echo(f"ddlc agent serving {running.url}"))


def _health_options(min_free_gb: float, checkpoint_path: Optional[Path]):
    from ddlc.ops.health import HealthOptions

    return HealthOptions(min_free_gb=min_free_gb, disk_path=checkpoint_path or Path("/"))


monitor_app = typer.Typer(help="Prometheus configuration and alert rules.", no_args_is_help=True)


@monitor_app.command("prometheus-config")
def prometheus_config(
    hostfile: Path = typer.Option(..., help="`host slots=N` per line, or one host per line."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write here instead of stdout."),
    agent_port: int = typer.Option(9400, help="Port of the node agents."),
    train_port: int = typer.Option(9500, help="Metrics port of local rank 0; rank i uses train_port + i."),
    no_training: bool = typer.Option(False, "--no-training", help="Scrape only the node agents."),
    scrape_interval: str = typer.Option("15s", help="Prometheus scrape and rule evaluation interval."),
    rules: list[str] = typer.Option([], "--rules", help="Rule file(s) for Prometheus to load (repeatable)."),
    alertmanager: list[str] = typer.Option(
        [], "--alertmanager", help="host:port of an Alertmanager to send alerts to (repeatable; default localhost:9093)."
    ),
    no_alertmanager: bool = typer.Option(False, "--no-alertmanager", help="No `alerting:` block."),
) -> None:
    """Write a prometheus.yml scraping every node's agent and training ranks."""
    from ddlc.monitor.prometheus_config import (
        DEFAULT_ALERTMANAGER, build_prometheus_config, parse_hostfile, render_prometheus_config,
    )

    if no_alertmanager and alertmanager:
        raise UserError("--alertmanager and --no-alertmanager contradict each other")
    config = build_prometheus_config(
        parse_hostfile(hostfile), agent_port=agent_port, train_port=None if no_training else train_port,
        scrape_interval=scrape_interval, rule_files=rules,
        alertmanagers=() if no_alertmanager else (alertmanager or [DEFAULT_ALERTMANAGER]),
    )
    _emit(render_prometheus_config(config), output)


@monitor_app.command("head-setup")
def head_setup(
    directory: Path = typer.Option(Path("/etc/ddlc/monitoring"), "--dir", help="Where the configs go."),
    hostfile: Path = typer.Option(Path("/etc/ddlc/hostfile"), help="Targets from here, if it exists yet."),
    sns_topic_arn: Optional[str] = typer.Option(None, help="Alertmanager's receiver: this SNS topic."),
    region: Optional[str] = typer.Option(None, help="Region of the SNS topic (SigV4 signing)."),
    webhook_url: Optional[str] = typer.Option(None, help="Alertmanager's receiver: this webhook instead."),
    retention_size: str = typer.Option("50GB", help="Prometheus keeps at most this much (e.g. 50GB)."),
    units_dir: Path = typer.Option(Path("/etc/systemd/system"), help="Where the systemd units go."),
    grafana: bool = typer.Option(False, "--grafana/--no-grafana", help="Also provision Grafana (installed)."),
    grafana_provisioning: Path = typer.Option(Path("/etc/grafana/provisioning"), hidden=True),
) -> None:
    """Write the head node's Prometheus, Alertmanager (and Grafana) configs and units (the boot runs this)."""
    from ddlc.monitor.head_config import (
        SnsReceiver, WebhookReceiver, check_destinations, monitoring_paths, write_head_monitoring,
    )
    from ddlc.monitor.head_units import grafana_paths, prometheus_unit, unit_paths, write_grafana, write_units

    if bool(sns_topic_arn) == bool(webhook_url):
        raise UserError("give one receiver: --sns-topic-arn (with --region) or --webhook-url")
    if sns_topic_arn and not region:
        raise UserError("--sns-topic-arn needs --region")
    receiver = SnsReceiver(sns_topic_arn, region) if sns_topic_arn else WebhookReceiver(webhook_url or "")
    # Absolute: prometheus.yml's paths are read relative to its own directory, the units' from systemd's `/`.
    directory = directory.absolute()
    prometheus_unit(str(directory), retention_size)  # checked before anything is written
    check_destinations(monitoring_paths(directory) + unit_paths(units_dir)
                       + (grafana_paths(directory, units_dir, grafana_provisioning) if grafana else []))
    paths = list(write_head_monitoring(directory, receiver, hostfile=hostfile).values())
    paths += write_units(units_dir, str(directory), retention_size)
    if grafana:
        paths += write_grafana(directory, units_dir, grafana_provisioning)
    for path in paths:
        typer.echo(f"wrote {path}", err=True)


@monitor_app.command("targets")
def targets(
    hostfile: Path = typer.Option(Path("/etc/ddlc/hostfile"), help="`host slots=N` per line."),
    directory: Path = typer.Option(Path("/etc/ddlc/monitoring/targets"), "--dir", help="file_sd files go here."),
    agent_port: int = typer.Option(9400, help="Port of the node agents."),
    train_port: int = typer.Option(9500, help="Metrics port of local rank 0; rank i uses train_port + i."),
) -> None:
    """Write Prometheus file_sd target files for the hostfile's nodes (the head's hostfile timer runs this)."""
    from ddlc.monitor.head_config import write_targets

    for path in write_targets(directory, hostfile, agent_port, train_port).values():
        typer.echo(f"wrote {path}", err=True)


@monitor_app.command("rules")
def rules(output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write here instead of stdout.")) -> None:
    """Print (or write) the ddlc Prometheus alert rules."""
    from ddlc.monitor.alert_rules import rules_text

    _emit(rules_text(), output)


def _emit(text: str, output: Optional[Path]) -> None:
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as error:
        raise UserError(f"cannot write {output}: {error.strerror or error}") from error
    typer.echo(f"wrote {output}", err=True)


def register(app: typer.Typer) -> None:
    app.command("agent")(agent)
    app.add_typer(monitor_app, name="monitor")
