"""Health alarms, all sent to the alert topic.

GPU alarms read the CloudWatch agent's `nvidia_gpu` metrics (namespace CWAgent) rolled up per cluster by
the `ClusterName` dimension: this stack writes that agent config, so the names and dimensions are ours
to guarantee. The checkpoint alarm reads `ddlc_checkpoint_last_success_timestamp_seconds` (namespace
DDLC, dimension `ClusterName`), which only the training runtime can know.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_sns as sns
from constructs import Construct

from ddlc.infra.user_data import CLUSTER_DIMENSION

GPU_UTILIZATION_THRESHOLD_PERCENT = 80
GPU_LOW_UTILIZATION_WINDOW = Duration.minutes(30)
GPU_MEMORY_THRESHOLD_PERCENT = 95
DDLC_NAMESPACE = "DDLC"
CHECKPOINT_METRIC = "ddlc_checkpoint_last_success_timestamp_seconds"


@dataclass(frozen=True)
class ClusterMetrics:
    """The metrics the alarms watch; also handed to dashboard definitions."""

    gpu_utilization: cloudwatch.Metric
    gpu_memory_used: cloudwatch.Metric
    gpu_memory_total: cloudwatch.Metric
    gpu_memory_percent: cloudwatch.MathExpression
    checkpoint_timestamp: cloudwatch.Metric


def cluster_metrics(cluster_name: str) -> ClusterMetrics:
    dims = {CLUSTER_DIMENSION: cluster_name}
    five_minutes = Duration.minutes(5)
    used = cloudwatch.Metric(namespace="CWAgent", metric_name="nvidia_smi_memory_used", dimensions_map=dims,
                             statistic="Maximum", period=five_minutes)
    total = cloudwatch.Metric(namespace="CWAgent", metric_name="nvidia_smi_memory_total", dimensions_map=dims,
                              statistic="Maximum", period=five_minutes)
    return ClusterMetrics(
        gpu_utilization=cloudwatch.Metric(
            namespace="CWAgent", metric_name="nvidia_smi_utilization_gpu", dimensions_map=dims,
            statistic="Average", period=five_minutes,
        ),
        gpu_memory_used=used,
        gpu_memory_total=total,
        gpu_memory_percent=cloudwatch.MathExpression(
            expression="100 * used / total", using_metrics={"used": used, "total": total},
            label="GPU memory used (%)", period=five_minutes,
        ),
        checkpoint_timestamp=cloudwatch.Metric(
            namespace=DDLC_NAMESPACE, metric_name=CHECKPOINT_METRIC, dimensions_map=dims, statistic="Maximum",
        ),
    )


class ClusterAlarms(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        topic: sns.ITopic,
        instances: dict[str, ec2.CfnInstance],
        recovery_point_objective: Duration,
    ) -> None:
        super().__init__(scope, construct_id)
        self.metrics = cluster_metrics(cluster_name)
        notify = actions.SnsAction(topic)
        self.alarms: list[cloudwatch.Alarm] = []

        def keep(alarm: cloudwatch.Alarm) -> cloudwatch.Alarm:
            alarm.add_alarm_action(notify)
            alarm.add_ok_action(notify)
            self.alarms.append(alarm)
            return alarm

        self.gpu_underutilized = keep(cloudwatch.Alarm(
            self, "GpuUnderutilized",
            alarm_description=f"{cluster_name}: average GPU utilization below "
            f"{GPU_UTILIZATION_THRESHOLD_PERCENT}% for 30 minutes (idle or starved GPUs cost money)",
            metric=self.metrics.gpu_utilization,
            threshold=GPU_UTILIZATION_THRESHOLD_PERCENT,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=int(GPU_LOW_UTILIZATION_WINDOW.to_minutes() // 5),
            treat_missing_data=cloudwatch.TreatMissingData.MISSING,
        ))
        self.gpu_memory_high = keep(cloudwatch.Alarm(
            self, "GpuMemoryHigh",
            alarm_description=f"{cluster_name}: a GPU is above {GPU_MEMORY_THRESHOLD_PERCENT}% memory "
            "(out-of-memory is near)",
            metric=self.metrics.gpu_memory_percent,
            threshold=GPU_MEMORY_THRESHOLD_PERCENT,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=2,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        ))
        # The timestamp gauge must rise at least once per RPO window. DIFF of the per-window maximum is 0
        # when no checkpoint landed; silence (no training, or no metrics at all) also counts as breaching.
        rpo_metric = self.metrics.checkpoint_timestamp.with_(period=recovery_point_objective)
        self.checkpoint_stale = keep(cloudwatch.Alarm(
            self, "CheckpointStale",
            alarm_description=f"{cluster_name}: no successful checkpoint within the recovery point objective "
            f"({int(recovery_point_objective.to_minutes())} minutes)",
            metric=cloudwatch.MathExpression(
                expression="DIFF(checkpoint)", using_metrics={"checkpoint": rpo_metric},
                label="checkpoint progress (s)", period=recovery_point_objective,
            ),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        ))
        self.status_check_failed: dict[str, cloudwatch.Alarm] = {}
        for name, instance in instances.items():
            self.status_check_failed[name] = keep(cloudwatch.Alarm(
                self, f"StatusCheckFailed{name}",
                alarm_description=f"{cluster_name}: {name} failed its EC2 status checks",
                metric=cloudwatch.Metric(
                    namespace="AWS/EC2", metric_name="StatusCheckFailed",
                    dimensions_map={"InstanceId": instance.ref}, statistic="Maximum", period=Duration.minutes(1),
                ),
                threshold=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=2,
                treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
            ))
