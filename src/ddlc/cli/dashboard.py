"""`ddlc dashboard` (the local web dashboard) and `ddlc dashboard export --grafana OUTDIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ddlc.errors import UserError

dashboard_app = typer.Typer(
    help="The four dashboards (GPU cluster health, training progress, network, cost): serve them locally or "
    "export them for Grafana.",
    invoke_without_command=True,
)


def _pricing(instance_type: Optional[str], nodes: Optional[int], price_table: Optional[Path]):
    from ddlc.dashboards.cost import Pricing
    from ddlc.monitor.pricing import hourly_price, load_price_table

    table = load_price_table(price_table)
    if instance_type is not None:
        hourly_price(instance_type, table)  # an unknown type fails now, not on the first page load
    return Pricing(instance_type, nodes, table)


@dashboard_app.callback()
def serve(
    ctx: typer.Context,
    run: Optional[Path] = typer.Option(None, "--run", help="Run directory to open first (default: the newest in --runs-dir)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="The local run store."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes the page to the network)."),
    port: int = typer.Option(8050, help="Port to listen on; 0 picks a free one."),
    prometheus: Optional[str] = typer.Option(None, "--prometheus", help="Prometheus URL to read cluster metrics from."),
    instance_type: Optional[str] = typer.Option(
        None, "--instance-type", help="Price runs as this instance type when their summary names none (default cpu-local)."),
    nodes: Optional[int] = typer.Option(None, "--nodes", min=1, help="Nodes per run for the cost of runs whose summary.json records none (default 1)."),
    price_table: Optional[Path] = typer.Option(None, "--price-table", help="Price overrides (YAML `prices:` mapping)."),
    refresh: float = typer.Option(2.0, "--refresh", min=0.2, help="Seconds between page updates."),
) -> None:
    """Serve the dashboards on http://127.0.0.1:8050/ until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    from ddlc.dashboards.panel_data import PanelData
    from ddlc.dashboards.prometheus import PrometheusClient
    from ddlc.dashboards.sampler import HostSampler
    from ddlc.dashboards.server import DashboardServer

    if run is not None and not run.is_dir():
        raise UserError(f"--run: {run} is not a directory (expected runs/<name>)")
    pricing = _pricing(instance_type, nodes, price_table)
    client = PrometheusClient(prometheus) if prometheus else None
    sampler = HostSampler(interval_s=min(refresh, 5.0))
    data = PanelData(runs_dir, pricing, sampler=sampler, prometheus=client, run_path=run)
    try:
        server = DashboardServer(data, host=host, port=port, refresh_ms=int(refresh * 1000))
    except UserError:
        sampler.close()
        raise
    sampler.start()
    typer.echo(f"ddlc dashboard serving {server.url} (Ctrl-C to stop)", err=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        sampler.close()


@dashboard_app.command("export")
def export(
    grafana: Path = typer.Option(..., "--grafana", help="Directory for the Grafana dashboards and provisioning files."),
    prometheus_url: str = typer.Option("http://localhost:9090", help="URL Grafana reaches Prometheus at."),
    dashboards_path: Optional[str] = typer.Option(
        None, help="Where the JSON files will be on the Grafana host (default: OUTDIR/dashboards, absolute)."),
) -> None:
    """Write Grafana dashboard JSON files and provisioning files generated from the same definition."""
    from ddlc.dashboards.grafana import export_grafana

    if grafana.exists() and not grafana.is_dir():
        raise UserError(f"--grafana: {grafana} exists and is not a directory")
    for path in export_grafana(grafana, prometheus_url=prometheus_url, dashboards_path=dashboards_path):
        typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.add_typer(dashboard_app, name="dashboard")
