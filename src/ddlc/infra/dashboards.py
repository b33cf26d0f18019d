"""Hook for CloudWatch dashboards: the stack takes dashboard definitions and builds one dashboard each.

Dashboard content is its own piece of work; a definition only needs a name and a function from the
cluster's metrics to rows of widgets, e.g.::

    class TrainingOverview:
        name = "training"
        def widgets(self, metrics: ClusterMetrics) -> list[list[cloudwatch.IWidget]]:
            return [[cloudwatch.GraphWidget(title="GPU utilization", left=[metrics.gpu_utilization])]]

    ClusterStack(app, "ddlc-prod", settings=..., dashboards=[TrainingOverview()])
"""

from __future__ import annotations

from typing import Protocol, Sequence

from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct

from ddlc.infra.alarms import ClusterMetrics


class DashboardDefinition(Protocol):
    name: str

    def widgets(self, metrics: ClusterMetrics) -> list[list[cloudwatch.IWidget]]: ...


class ClusterDashboards(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        metrics: ClusterMetrics,
        definitions: Sequence[DashboardDefinition] = (),
    ) -> None:
        super().__init__(scope, construct_id)
        self.dashboards: dict[str, cloudwatch.Dashboard] = {}
        for definition in definitions:
            self.dashboards[definition.name] = cloudwatch.Dashboard(
                self,
                f"Dashboard-{definition.name}",
                dashboard_name=f"{cluster_name}-{definition.name}",
                widgets=definition.widgets(metrics),
            )
