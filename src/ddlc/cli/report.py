"""`ddlc report utilization`: the weekly GPU utilization and cost review (logic in ddlc.dashboards.report)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ddlc.errors import UserError

report_app = typer.Typer(help="Reports from the run store and Prometheus.", no_args_is_help=True)


@report_app.command("utilization")
def utilization(
    since: str = typer.Option("7d", "--since", help="Window to review: 7d, 24h, 90m, 2w."),
    run: list[str] = typer.Option([], "--run", help="Only this run (name or runs/NAME); repeatable."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="The local run store."),
    output: Path = typer.Option(Path("utilization-report.md"), "-o", "--output", help="Report file; its suffix picks the format: .md (Markdown) or .html."),
    prometheus: Optional[str] = typer.Option(None, "--prometheus", help="Prometheus URL for GPU utilization per node."),
    instance_type: Optional[str] = typer.Option(
        None, "--instance-type", help="Price runs as this instance type when their summary names none (default cpu-local)."),
    nodes: Optional[int] = typer.Option(None, "--nodes", min=1, help="Nodes per run for the cost of runs whose summary.json records none (default 1)."),
    price_table: Optional[Path] = typer.Option(None, "--price-table", help="Price overrides (YAML `prices:` mapping)."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse metrics columns read before from the very same "
                               "bytes ($XDG_CACHE_HOME/ddlc/columns, default ~/.cache/ddlc/columns)."),
) -> None:
    """GPU-hours, mean utilization vs the 80% target, idle nodes, cost and the worst offenders, with plots."""
    from ddlc.dashboards.column_cache import ColumnCache
    from ddlc.dashboards.cost import Pricing
    from ddlc.dashboards.report import check_output, collect, parse_since, write_report
    from ddlc.monitor.pricing import hourly_price, load_price_table

    if output.suffix.lower() not in (".md", ".html", ".htm"):  # before the (slow) collection, not after it
        raise UserError(f"-o/--output: {output} must end in .md or .html (the report's format)")
    check_output(output)  # a directory in the way: said now, not after reading the store
    window = parse_since(since)
    client = _prometheus(prometheus) if prometheus else None  # a URL urllib cannot use fails now, in one line
    table = load_price_table(price_table)
    if instance_type is not None:
        hourly_price(instance_type, table)
    names = [Path(item).name for item in run]
    if run and len({str(Path(item).parent) for item in run if "/" in item}) == 1 and runs_dir == Path("runs"):
        runs_dir = Path(next(item for item in run if "/" in item)).parent  # --run other/NAME implies its store
    report = collect(runs_dir, window, Pricing(instance_type, nodes, table), run_names=names,
                     prometheus=client, cache=ColumnCache() if cache else None)
    path = write_report(report, output)
    typer.echo(f"wrote {path} ({len(report.runs)} runs, plots in {path.parent / (path.stem + '_files')})")


def _prometheus(url: str):  # imported only when asked for: urllib and http.client cost the plain report time
    from ddlc.dashboards.prometheus import PrometheusClient

    return PrometheusClient(url)


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
