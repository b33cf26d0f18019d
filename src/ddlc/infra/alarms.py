"""Health alarms, all sent to the alert topic. Each watches a series that something in this project publishes:

    CloudWatch agent (user_data.cloudwatch_agent_config, namespace CWAgent, rolled up by ClusterName)
        nvidia_smi_utilization_gpu ───────────────> GPU under-utilized
    CloudWatch agent Prometheus scrape of the training ranks (EMF, namespace DDLC, dimension ClusterName)
        ddlc_checkpoint_last_success_timestamp_seconds{tier="storage"} ──> checkpoint stale (silent when no job exports it)
    CloudWatch Logs metric filters (log_alarms below, namespace DDLC/<cluster>) on the node and training logs
        host OOM killer, CUDA out of memory, NVIDIA Xid, EFA errors ──> one alarm each (>= 1 event in 5 min)
    AWS/EC2 and AWS/AutoScaling (published by AWS for the head instance and the worker group)
        StatusCheckFailed (head; workers by group), GroupInServiceInstances < node_count

Missing data never pages: a stopped node, an idle cluster or a quiet log is not an incident. GPU memory is not
alarmed on: frameworks reserve nearly all of it on purpose; out-of-memory *events* are what matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from constructs import Construct

from ddlc.infra.user_data import CLUSTER_DIMENSION

GPU_UTILIZATION_THRESHOLD_PERCENT = 80
GPU_LOW_UTILIZATION_WINDOW = Duration.minutes(30)
DDLC_NAMESPACE = "DDLC"
CHECKPOINT_METRIC = "ddlc_checkpoint_last_success_timestamp_seconds"
WORKERS_IN_SERVICE_WINDOW = Duration.minutes(15)


def log_metric_namespace(cluster_name: str) -> str:
    """Metric filters cannot add a constant dimension, so log-derived metrics get a namespace per cluster."""
    return f"{DDLC_NAMESPACE}/{cluster_name}"


@dataclass(frozen=True)
class LogAlarm:
    """A metric filter (CloudWatch Logs filter pattern) and the alarm on its count."""

    key: str
    metric_name: str
    pattern: str
    log_groups: tuple[str, ...]  # "nodes" and/or "training"
    description: str
    # Lines the pattern must match (kept next to it; tests check them): what the source really writes.
    examples: tuple[str, ...] = field(default=())


LOG_ALARMS = (
    LogAlarm(
        "HostOom", "host_oom_kills", '"Out of memory: Killed process"', ("nodes",),
        "the kernel OOM killer ended a process (host memory exhausted: data loader workers, pinned buffers)",
        examples=("kernel: [12345.678] Out of memory: Killed process 4242 (python) total-vm:123kB",),
    ),
    LogAlarm(
        "CudaOom", "cuda_oom_errors", '?"CUDA out of memory" ?"OutOfMemoryError"', ("nodes", "training"),
        "a training process ran out of GPU memory",
        examples=("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",),
    ),
    LogAlarm(
        "GpuXid", "gpu_xid_errors", '"NVRM: Xid"', ("nodes",),
        "the NVIDIA driver reported an Xid error (GPU fault; the node may need a reset or replacement)",
        examples=("kernel: NVRM: Xid (PCI:0000:10:1c): 79, pid=1234, GPU has fallen off the bus.",),
    ),
    LogAlarm(
        "EfaErrors", "efa_errors", '?"efa_com" ?"NET/OFI Error" ?"EFA error"', ("nodes", "training"),
        "EFA reported an error (driver admin queue, or libfabric through the NCCL OFI plugin)",
        examples=("kernel: efa 0000:10:1d.0: efa_com_wait_and_process_admin_cq_polling: Failed",
                  "ip-10-42-0-5:1234:1300 [0] NCCL WARN NET/OFI Error: Request completed with error"),
    ),
)


@dataclass(frozen=True)
class ClusterMetrics:
    """The metrics the alarms watch; also handed to dashboard definitions."""

    gpu_utilization: cloudwatch.Metric
    gpu_memory_used: cloudwatch.Metric
    gpu_memory_total: cloudwatch.Metric
    gpu_memory_percent: cloudwatch.MathExpression
    checkpoint_timestamp: cloudwatch.Metric
    log_events: dict[str, cloudwatch.Metric] = field(default_factory=dict)


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
        log_events={
            spec.key: cloudwatch.Metric(
                namespace=log_metric_namespace(cluster_name), metric_name=spec.metric_name, statistic="Sum",
                period=five_minutes,
            )
            for spec in LOG_ALARMS
        },
    )


class ClusterAlarms(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        topic: sns.ITopic,
        head: ec2.CfnInstance,
        worker_group_name: str,
        worker_count: int,
        log_groups: dict[str, logs.ILogGroup],
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
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        ))
        # The ranks' timestamp gauge must rise at least once per RPO window while a job exports it. DIFF of the
        # per-window maximum is 0 when no checkpoint landed. No data (no job, or metrics_port not set) is not
        # an incident here: the GPU under-utilization alarm covers an idle cluster.
        rpo_metric = self.metrics.checkpoint_timestamp.with_(period=recovery_point_objective)
        self.checkpoint_stale = keep(cloudwatch.Alarm(
            self, "CheckpointStale",
            alarm_description=f"{cluster_name}: no successful checkpoint within the recovery point objective "
            f"({int(recovery_point_objective.to_minutes())} minutes) while a job runs",
            metric=cloudwatch.MathExpression(
                expression="DIFF(checkpoint)", using_metrics={"checkpoint": rpo_metric},
                label="checkpoint progress (s)", period=recovery_point_objective,
            ),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        ))

        self.metric_filters: list[logs.MetricFilter] = []
        self.log_alarms: dict[str, cloudwatch.Alarm] = {}
        for spec in LOG_ALARMS:
            for group_key in spec.log_groups:
                self.metric_filters.append(logs.MetricFilter(
                    self, f"{spec.key}Filter{group_key.capitalize()}",
                    log_group=log_groups[group_key],
                    filter_pattern=logs.FilterPattern.literal(spec.pattern),
                    metric_namespace=log_metric_namespace(cluster_name),
                    metric_name=spec.metric_name,
                    metric_value="1",
                ))
            self.log_alarms[spec.key] = keep(cloudwatch.Alarm(
                self, spec.key,
                alarm_description=f"{cluster_name}: {spec.description}",
                metric=self.metrics.log_events[spec.key],
                threshold=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ))

        def status_check(alarm_id: str, what: str, dimensions: dict[str, str]) -> cloudwatch.Alarm:
            return keep(cloudwatch.Alarm(
                self, alarm_id,
                alarm_description=f"{cluster_name}: {what} failed its EC2 status checks",
                metric=cloudwatch.Metric(
                    namespace="AWS/EC2", metric_name="StatusCheckFailed",
                    dimensions_map=dimensions, statistic="Maximum", period=Duration.minutes(1),
                ),
                threshold=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=2,
                # A stopped instance publishes nothing: that is not a failure.
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ))

        self.status_check_failed = {
            "Head": status_check("StatusCheckFailedHead", "the head node", {"InstanceId": head.ref}),
            "Workers": status_check("StatusCheckFailedWorkers", "a GPU worker (the group replaces it)",
                                    {"AutoScalingGroupName": worker_group_name}),
        }
        self.workers_missing = keep(cloudwatch.Alarm(
            self, "WorkersNotInService",
            alarm_description=f"{cluster_name}: fewer than {worker_count} GPU workers in service for "
            f"{int(WORKERS_IN_SERVICE_WINDOW.to_minutes())} minutes (a replacement cannot launch: capacity, "
            "reservation or quota)",
            metric=cloudwatch.Metric(
                namespace="AWS/AutoScaling", metric_name="GroupInServiceInstances",
                dimensions_map={"AutoScalingGroupName": worker_group_name}, statistic="Minimum",
                period=Duration.minutes(1),
            ),
            threshold=worker_count,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=int(WORKERS_IN_SERVICE_WINDOW.to_minutes()),
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        ))
