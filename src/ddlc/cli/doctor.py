"""`ddlc doctor`: preflight checks for this node (logic in ddlc.ops.doctor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

STATUS_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red", "SKIP": "dim"}


def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    checkpoint_uri: Optional[str] = typer.Option(
        None, "--checkpoint-uri", help="Probe write access here (local path, file:// or s3://). "
        "Default on a cluster node: s3://$DDLC_CHECKPOINT_BUCKET/checkpoints."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint "
                                               "(default: AWS_ENDPOINT_URL)."),
    hostfile: Optional[Path] = typer.Option(None, "--hostfile", help="Compare clocks and versions with these hosts "
                                            "(default on a cluster node: /etc/ddlc/hostfile)."),
    master_port: Optional[int] = typer.Option(None, "--master-port", min=1, max=65535,
                                              help="Rendezvous port to check (default: MASTER_PORT, else 29500)."),
    min_free_gb: float = typer.Option(50.0, "--min-free-gb", min=0, help="Free disk required for checkpoints/runs."),
    expect_gpus: Optional[int] = typer.Option(None, "--expect-gpus", min=0, help="GPUs this node must have "
                                              "(default on a cluster worker: DDLC_GPUS_PER_NODE)."),
    expect_efa: bool = typer.Option(False, "--expect-efa", help="Fail when this node has no EFA device."),
    ssh_port: Optional[int] = typer.Option(None, "--ssh-port", min=1, max=65535, help="ssh port of the other hosts."),
    timeout: float = typer.Option(20.0, "--timeout", min=1, help="Seconds each network check may take."),
) -> None:
    """Preflight checks for this node: GPUs, driver/CUDA, NCCL, EFA, limits, disk, checkpoint access, ports,
    and clocks/versions across the hosts of a hostfile. Exit code 1 when any check FAILs."""
    from ddlc.ops.doctor import DoctorOptions, SshRunner, Status, report, run_checks, worst

    options = DoctorOptions(
        checkpoint_uri=checkpoint_uri, endpoint_url=endpoint_url, hostfile=hostfile, master_port=master_port,
        min_free_gb=min_free_gb, expect_gpus=expect_gpus, expect_efa=expect_efa,
        runner=SshRunner(port=ssh_port), network_timeout_s=timeout,
    )
    results = run_checks(options)
    if as_json:
        typer.echo(json.dumps(report(results), indent=2))
    else:
        _print_results(results)
    if worst(results) is Status.FAIL:
        raise typer.Exit(1)


def _print_results(results) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, soft_wrap=True)
    width = max(len(r.name) for r in results)
    for result in results:
        status = result.status.value
        console.print(f"[{STATUS_STYLE[status]}]{status}[/] {result.name:<{width}}  {escape(result.detail)}")
        if result.fix:
            console.print(f"     {'':<{width}}  fix: {escape(result.fix)} ({result.doc})", style="dim" if
                          status == "SKIP" else None)
    counts = {s: sum(r.status.value == s for r in results) for s in STATUS_STYLE}
    console.print("doctor: " + ", ".join(f"{n} {s}" for s, n in counts.items()))


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
