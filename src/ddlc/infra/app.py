"""CDK entry point: `cdk synth|deploy|destroy --context environment=<name> [--context scheduler=slurm|none]
[--context grafana=none|head]` runs this module.

cdk-nag's AwsSolutions pack runs on every synth, so a finding without an acknowledgment fails it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from aws_cdk import App, Environment, Validations  # noqa: E402
from cdk_nag import AwsSolutionsChecks  # noqa: E402

from ddlc.errors import UserError, exit_with  # noqa: E402
from ddlc.infra.dashboards import DashboardDefinition  # noqa: E402
from ddlc.infra.settings import load_environment  # noqa: E402
from ddlc.infra.stack import ClusterStack  # noqa: E402


def default_dashboards() -> Sequence[DashboardDefinition]:
    """The four standard dashboards of ddlc.dashboards (what `cdk synth|deploy|destroy` builds)."""
    from ddlc.dashboards.cloudwatch import standard_dashboards

    return standard_dashboards()


def build_app(
    context: Optional[dict[str, Any]] = None,
    outdir: Optional[str] = None,
    dashboards: Optional[Sequence[DashboardDefinition]] = None,
) -> tuple[App, ClusterStack]:
    """The app for the environment named by the `environment` context key (checked by cdk-nag on synth).

    `dashboards`: None builds the four standard dashboards of ddlc.dashboards; pass a sequence to choose."""
    if dashboards is None:
        dashboards = default_dashboards()
    app = App(context=context, outdir=outdir)
    settings = load_environment(app.node.try_get_context("environments"), app.node.try_get_context("environment"),
                                scheduler=app.node.try_get_context("scheduler"),
                                grafana=app.node.try_get_context("grafana"))
    # Region only: the account comes from the deploying credentials, and synth needs no AWS lookups.
    stack = ClusterStack(
        app, settings.stack_name, settings=settings, dashboards=dashboards, env=Environment(region=settings.region),
    )
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack


def main() -> None:
    try:
        app, _ = build_app()
    except UserError as error:
        exit_with(error)
    app.synth()


if __name__ == "__main__":
    main()
    sys.exit(0)
