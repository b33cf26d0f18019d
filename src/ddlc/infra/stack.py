"""The cluster stack: wires the constructs together for one environment and publishes the outputs the
`ddlc cluster` commands read."""

from __future__ import annotations

from typing import Any, Sequence

from aws_cdk import Annotations, CfnOutput, Duration, Fn, RemovalPolicy, Stack, Tags
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from ddlc.infra.alarms import ClusterAlarms
from ddlc.infra.alert_topic import AlertTopic
from ddlc.infra.checkpoint_bucket import CheckpointBucket
from ddlc.infra.cost_budget import CostBudget
from ddlc.infra.dashboards import ClusterDashboards, DashboardDefinition
from ddlc.infra.launch_template import NodeLaunchTemplate
from ddlc.infra.log_groups import ClusterLogGroups
from ddlc.infra.munge_secret import ClusterMungeSecret
from ddlc.infra.lustre import LustreScratch
from ddlc.infra.network import ClusterNetwork
from ddlc.infra.node_package import NodePackage
from ddlc.infra.node_role import NodeRole
from ddlc.infra.ssh_secret import ClusterSshSecret
from ddlc.infra.nodes import CLUSTER_TAG, ClusterNodes, worker_group_name
from ddlc.infra.patch_maintenance import PatchMaintenance
from ddlc.infra.placement import ClusterPlacement
from ddlc.infra.security_group import EfaSecurityGroup
from ddlc.infra.settings import PROJECT, ClusterEnvironment
from ddlc.infra.user_data import NodeBootConfig, render_user_data

# Output keys: the contract with ddlc.infra.discovery.
OUTPUT_HEAD_NODE_ID = "HeadNodeId"
OUTPUT_CONNECT_COMMAND = "ConnectCommand"
OUTPUT_BUCKET = "CheckpointBucketName"
OUTPUT_ALERT_TOPIC = "AlertTopicArn"
OUTPUT_CLUSTER_NAME = "ClusterName"
OUTPUT_WORKER_COUNT = "WorkerCount"
OUTPUT_WORKER_GROUP = "WorkerGroupName"
OUTPUT_PLACEMENT = "WorkerPlacement"


class ClusterStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: ClusterEnvironment,
        dashboards: Sequence[DashboardDefinition] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, description=f"ddlc GPU training cluster ({settings.name})", **kwargs)
        self.settings = settings
        cluster = self.stack_name
        removal = RemovalPolicy.RETAIN if settings.retain_data else RemovalPolicy.DESTROY
        retention = _retention(settings.log_retention_days)

        Tags.of(self).add("project", PROJECT)
        Tags.of(self).add("environment", settings.name)
        Tags.of(self).add(CLUSTER_TAG, cluster)

        self.network = ClusterNetwork(
            self, "Network", cidr=settings.vpc_cidr, availability_zone=settings.availability_zone,
            log_retention=retention, removal_policy=removal,
        )
        self.security = EfaSecurityGroup(self, "Efa", vpc=self.network.vpc)
        self.checkpoints = CheckpointBucket(
            self, "Checkpoints", retain=settings.retain_data, noncurrent_days=settings.checkpoint_noncurrent_days,
        )
        self.logs = ClusterLogGroups(
            self, "Logs", environment=settings.name, retention=retention, removal_policy=removal,
        )
        nodes_group_name = worker_group_name(cluster)
        self.node_role = NodeRole(
            self, "NodeRole", bucket=self.checkpoints.bucket, worker_group_name=nodes_group_name,
        )
        instance_profile = iam.InstanceProfile(self, "NodeInstanceProfile", role=self.node_role.role)
        self.package = NodePackage(self, "NodePackage", environment=settings.name, role=self.node_role)
        self.ssh = ClusterSshSecret(self, "Ssh", cluster_name=cluster, role=self.node_role.role)
        # Slurm (settings.scheduler): the munge key secret and Slurm's ports; the boot script does the rest.
        self.munge = None
        if settings.scheduler == "slurm":
            from ddlc.scheduler.cluster_spec import SRUN_PORT_RANGE
            from ddlc.scheduler.slurm_conf import SLURMCTLD_PORT, SLURMD_PORT

            self.munge = ClusterMungeSecret(self, "Munge", cluster_name=cluster, role=self.node_role.role)
            self.security.allow_slurm(SLURMCTLD_PORT, SLURMD_PORT, SRUN_PORT_RANGE)

        self.lustre = None
        if settings.fsx_lustre is not None:
            self.lustre = LustreScratch(
                self, "Lustre", settings=settings.fsx_lustre, vpc=self.network.vpc,
                subnet=self.network.node_subnet, security_group=self.security.security_group,
                bucket=self.checkpoints.bucket, removal_policy=removal,
            )

        # Before the boot scripts: the head node's Alertmanager publishes to it (ddlc.infra.monitoring_boot).
        self.alerts = AlertTopic(self, "Alerts", email=settings.alert_email, removal_policy=removal)
        self.node_role.allow_publish_alerts(self.alerts.topic, self.alerts.key)

        self.placement = ClusterPlacement(self, "Placement", settings=settings)
        if settings.ami_id:
            machine_image = ec2.MachineImage.generic_linux({settings.region: settings.ami_id})
        else:
            machine_image = ec2.MachineImage.from_ssm_parameter(settings.ami_ssm_parameter,
                                                                os=ec2.OperatingSystemType.LINUX)
            if settings.retain_data:
                Annotations.of(self).add_warning_v2(
                    "ddlc:ami-not-pinned",
                    f"environments.{settings.name}.ami_id is not set: the AMI follows {settings.ami_ssm_parameter}, "
                    "so a deploy after AWS publishes a new AMI moves the workers to it. Pin ami_id (docs: AMI rollover).",
                )
        gpu_type = settings.gpu_type

        self.boot_configs: dict[str, NodeBootConfig] = {}  # what each role's user data was rendered from

        def user_data(role: str, has_gpu: bool) -> ec2.UserData:
            boot = NodeBootConfig(
                cluster_name=cluster, environment=settings.name, role=role, region=settings.region,
                bucket_name=self.checkpoints.bucket.bucket_name, node_count=settings.node_count,
                gpus_per_node=gpu_type.gpus, node_log_group=self.logs.nodes.log_group_name,
                training_log_group=self.logs.training.log_group_name, has_gpu=has_gpu,
                package_parameter=self.package.parameter_name, ssh_secret_id=self.ssh.secret.secret_arn,
                cluster_cidr=settings.vpc_cidr, worker_group_name=nodes_group_name,
                ssh_users=tuple(settings.ssh_users),
                lustre_dns_name=self.lustre.file_system.dns_name if self.lustre else None,
                lustre_mount_name=self.lustre.file_system.mount_name if self.lustre else None,
                lustre_mount_path=settings.fsx_lustre.mount_path if settings.fsx_lustre else "/fsx",
                scheduler=settings.scheduler,
                munge_secret_id=self.munge.secret.secret_arn if self.munge else None,
                worker_instance_type=gpu_type.name,
                alert_topic_arn=self.alerts.topic.topic_arn if role == "head" else "",
                prometheus_retention_gib=settings.prometheus_retention_gib, grafana=settings.grafana == "head",
            )
            self.boot_configs[role] = boot
            script = ec2.UserData.for_linux()
            script.add_commands(*render_user_data(boot))
            return script

        common = dict(
            machine_image=machine_image, instance_profile=instance_profile,
            subnet_id=self.network.node_subnet.subnet_id,
            security_group_id=self.security.security_group.security_group_id,
            root_volume_gib=settings.root_volume_gib,
        )
        self.head_template = NodeLaunchTemplate(
            self, "HeadTemplate", instance_type=settings.head_instance_type, gpu_type=None,
            user_data=user_data("head", has_gpu=False), **common,
        )
        self.worker_template = NodeLaunchTemplate(
            self, "WorkerTemplate", instance_type=settings.instance_type, gpu_type=gpu_type,
            user_data=user_data("worker", has_gpu=True),
            capacity_reservation_id=settings.capacity_reservation_id,
            capacity_block=settings.capacity_block,
            **common,
        )
        patch_group = f"{cluster}-head"
        self.nodes = ClusterNodes(
            self, "Nodes", cluster_name=cluster,
            head_template=self.head_template.launch_template,
            worker_template=self.worker_template.launch_template,
            worker_count=settings.node_count, head_patch_group=patch_group,
            subnet_id=self.network.node_subnet.subnet_id, placement_group_name=self.placement.group_name,
            topic=self.alerts.topic,
        )

        self.alarms = ClusterAlarms(
            self, "Alarms", cluster_name=cluster, topic=self.alerts.topic, head=self.nodes.head,
            worker_group_name=nodes_group_name, worker_count=settings.node_count,
            log_groups={"nodes": self.logs.nodes, "training": self.logs.training},
            recovery_point_objective=Duration.minutes(settings.recovery_point_objective_minutes),
        )
        self.dashboards = ClusterDashboards(
            self, "Dashboards", cluster_name=cluster, metrics=self.alarms.metrics, definitions=dashboards,
        )
        self.budget = CostBudget(
            self, "Budget", cluster_name=cluster, monthly_usd=settings.budget_usd, email=settings.alert_email,
            topic=self.alerts.topic, cluster_tag=CLUSTER_TAG,
        )
        self.maintenance = PatchMaintenance(
            self, "Maintenance", cluster_name=cluster, patch_group=patch_group,
            head_instance_id=self.nodes.head.ref,
        )

        CfnOutput(self, OUTPUT_CLUSTER_NAME, value=cluster, description="Cluster name (the ddlc:cluster tag)")
        CfnOutput(self, OUTPUT_HEAD_NODE_ID, value=self.nodes.head.ref, description="Head node instance id")
        CfnOutput(
            self, OUTPUT_CONNECT_COMMAND,
            value=Fn.join("", ["aws ssm start-session --target ", self.nodes.head.ref, " --region ", self.region]),
            description="Open a shell on the head node (no SSH, no public IP)",
        )
        CfnOutput(self, OUTPUT_BUCKET, value=self.checkpoints.bucket.bucket_name, description="Checkpoint bucket")
        CfnOutput(self, OUTPUT_ALERT_TOPIC, value=self.alerts.topic.topic_arn, description="Alert SNS topic")
        CfnOutput(self, OUTPUT_WORKER_COUNT, value=str(settings.node_count), description="GPU worker nodes")
        CfnOutput(self, OUTPUT_WORKER_GROUP, value=self.nodes.workers.ref, description="GPU worker Auto Scaling group")
        CfnOutput(self, OUTPUT_PLACEMENT, value=self.placement.description, description="Where the workers are placed")


_RETENTION_BY_DAYS = {
    1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS", 30: "ONE_MONTH",
    60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS", 150: "FIVE_MONTHS", 180: "SIX_MONTHS",
    365: "ONE_YEAR", 400: "THIRTEEN_MONTHS", 545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS", 1096: "THREE_YEARS",
    1827: "FIVE_YEARS", 2192: "SIX_YEARS", 2557: "SEVEN_YEARS", 2922: "EIGHT_YEARS", 3288: "NINE_YEARS",
    3653: "TEN_YEARS",
}


def _retention(days: int) -> logs.RetentionDays:
    """Settings validate `days` against the same list, so this lookup cannot miss."""
    return logs.RetentionDays[_RETENTION_BY_DAYS[days]]
