"""CloudWatch dashboards for the CDK stack, generated from ddlc.dashboards.definition.

Each `CloudWatchDashboard` fits the stack's hook (ddlc.infra.dashboards.DashboardDefinition): a `name` and
`widgets(metrics)`. Panels read either the very series an alarm watches (`alarm:<field>` of
ddlc.infra.alarms.ClusterMetrics) or a metric-math SEARCH over the CloudWatch agent (`CWAgent`, filtered by
the `ClusterName` dimension) or ddlc's own namespace (`DDLC`). Panels without a CloudWatch query are left out.

Needs the `infra` extra (aws-cdk-lib); imported only by the CDK app.
"""

from __future__ import annotations

import re

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch

from ddlc.dashboards.definition import DASHBOARDS, Dashboard, Panel
from ddlc.infra.alarms import ClusterMetrics
from ddlc.infra.user_data import CLUSTER_DIMENSION

PERIOD = Duration.minutes(5)
HEIGHT = {"timeseries": 6, "bar": 6, "stat": 4}
Y_AXIS_LABEL = {
    "percent": "%", "bytes": "bytes", "bytes_per_second": "bytes/s", "per_second": "per second", "seconds": "s",
    "usd": "USD", "tokens_per_second": "tokens/s", "celsius": "°C", "watts": "W", "hours": "h", "count": "",
    "none": "",
}
# Prometheus label -> CloudWatch dimension, for legends (`{{node}}` -> ${PROP('Dim.InstanceId')}).
_AGENT_DIMENSIONS = {"node": "InstanceId", "gpu": "index", "device": "interface"}
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _label(template: str, expression: str) -> str:
    agent = 'Namespace="CWAgent"' in expression
    return _LEGEND.sub(
        lambda m: "${PROP('Dim." + (_AGENT_DIMENSIONS.get(m.group(1), m.group(1)) if agent else m.group(1)) + "')}",
        template,
    )


def panel_metrics(panel: Panel, metrics: ClusterMetrics, cluster_name: str) -> list[cloudwatch.IMetric]:
    result: list[cloudwatch.IMetric] = []
    for series in panel.series:
        if series.cloudwatch is None:
            continue
        if series.cloudwatch.startswith("alarm:"):
            result.append(getattr(metrics, series.cloudwatch.split(":", 1)[1]))
            continue
        expression = series.cloudwatch.replace("$CLUSTER", cluster_name)
        result.append(cloudwatch.MathExpression(
            expression=expression, using_metrics={}, label=_label(series.label, expression), period=PERIOD,
        ))
    return result


def panel_widget(panel: Panel, metrics: ClusterMetrics, cluster_name: str) -> cloudwatch.IWidget:
    series = panel_metrics(panel, metrics, cluster_name)
    width, height = panel.width, HEIGHT[panel.kind]
    if panel.kind == "stat":
        return cloudwatch.SingleValueWidget(title=panel.title, metrics=series, width=width, height=height)
    axis = cloudwatch.YAxisProps(
        label=Y_AXIS_LABEL[panel.unit], show_units=False, min=0, max=100 if panel.unit == "percent" else None,
    )
    annotations = [
        cloudwatch.HorizontalAnnotation(
            value=t.value, label=t.label, color=cloudwatch.Color.ORANGE if t.bad == "below" else cloudwatch.Color.RED,
            fill=cloudwatch.Shading.BELOW if t.bad == "below" else cloudwatch.Shading.ABOVE,
        )
        for t in panel.thresholds
    ]
    return cloudwatch.GraphWidget(
        title=panel.title, left=series, left_y_axis=axis, left_annotations=annotations or None,
        view=cloudwatch.GraphWidgetView.BAR if panel.kind == "bar" else cloudwatch.GraphWidgetView.TIME_SERIES,
        width=width, height=height,
    )


class CloudWatchDashboard:
    """One dashboard of the definition, for ClusterStack(dashboards=[...])."""

    def __init__(self, board: Dashboard) -> None:
        self.board = board
        self.name = board.slug

    def panels(self) -> list[Panel]:
        return [panel for panel in self.board.panels if panel.has("cloudwatch")]

    def widgets(self, metrics: ClusterMetrics) -> list[list[cloudwatch.IWidget]]:
        cluster_name = metrics.gpu_utilization.dimensions[CLUSTER_DIMENSION]
        header = cloudwatch.TextWidget(markdown=f"## {self.board.title}\n{self.board.description}", width=24, height=2)
        rows: list[list[cloudwatch.IWidget]] = [[header]]
        row: list[cloudwatch.IWidget] = []
        used = 0
        for panel in self.panels():
            if used + panel.width > 24:
                rows.append(row)
                row, used = [], 0
            row.append(panel_widget(panel, metrics, cluster_name))
            used += panel.width
        if row:
            rows.append(row)
        return rows


def standard_dashboards() -> list[CloudWatchDashboard]:
    """The four dashboards: GPU cluster health, training progress, network performance, cost tracking."""
    return [CloudWatchDashboard(board) for board in DASHBOARDS]
