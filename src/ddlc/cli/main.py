"""`ddlc` entry point. Each concern registers its commands from its own module."""

from __future__ import annotations

import typer

from ddlc import __version__
from ddlc.cli import agent as agent_cmd
from ddlc.cli import checkpoints as checkpoints_cmd
from ddlc.cli import cluster as cluster_cmd
from ddlc.cli import dashboard as dashboard_cmd
from ddlc.cli import report as report_cmd
from ddlc.cli import scheduler as scheduler_cmd
from ddlc.cli import doctor as doctor_cmd
from ddlc.cli import health as health_cmd
from ddlc.cli import launch as launch_cmd
from ddlc.cli import train as train_cmd
from ddlc.cli.errors import run_app

app = typer.Typer(
    name="ddlc",
    help="Distributed Deep Learning Cluster: deploy, train, checkpoint, monitor and maintain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ddlc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Distributed Deep Learning Cluster."""


train_cmd.register(app)
agent_cmd.register(app)
checkpoints_cmd.register(app)
cluster_cmd.register(app)
dashboard_cmd.register(app)
report_cmd.register(app)
doctor_cmd.register(app)
health_cmd.register(app)
launch_cmd.register(app)
scheduler_cmd.register(app)


def run() -> None:
    """Console-script entry: usage and user errors become one line and exit code 2 (ddlc.cli.errors)."""
    run_app(app)


if __name__ == "__main__":
    run()
