"""The cluster's instances: one head node (login + launcher, no GPU) and an Auto Scaling group of GPU workers.

    worker launch template ──> Auto Scaling group "<cluster>-workers": min = max = desired = node_count,
        in the placement group (placement.py), on the capacity reservation the template targets
        ├─ EC2 status checks fail, or a node marks itself Unhealthy (autoscaling:SetInstanceHealth after N
        │  failed `ddlc health` checks) ──> the group terminates it and launches a replacement from the same
        │  template; the replacement is found by tag (discovery.py) and joins at the next rendezvous
        └─ AMI / driver rollover: a deploy only points the group at the new template version (no instance is
           replaced by the deploy); `ddlc cluster refresh` then runs an instance refresh with min healthy 0 %,
           max healthy 100 % (terminate first, then launch: works inside a full reservation or Capacity Block)

The head node stays a single instance. Every instance is tagged for discovery (`ddlc:cluster`, `role`) and cost
allocation (`project`, `environment`, `role`); worker tags propagate from the group at launch.
"""

from __future__ import annotations

from typing import Optional

from aws_cdk import Acknowledgment, Duration, Tags, Validations
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_sns as sns
from constructs import Construct

ROLE_TAG = "role"
NODE_INDEX_TAG = "ddlc:node-index"
CLUSTER_TAG = "ddlc:cluster"
PATCH_GROUP_TAG = "Patch Group"
# Time a fresh worker gets to boot (install ddlc, mount /fsx) before failed status checks replace it.
HEALTH_CHECK_GRACE = Duration.minutes(20)
# Replacing a worker never needs capacity beyond node_count (terminate first): fits a full reservation.
MIN_HEALTHY_PERCENT = 0
MAX_HEALTHY_PERCENT = 100
SCALING_NOTIFICATIONS = (
    "autoscaling:EC2_INSTANCE_LAUNCH", "autoscaling:EC2_INSTANCE_LAUNCH_ERROR",
    "autoscaling:EC2_INSTANCE_TERMINATE", "autoscaling:EC2_INSTANCE_TERMINATE_ERROR",
)
GROUP_METRICS = ("GroupDesiredCapacity", "GroupInServiceInstances", "GroupPendingInstances",
                 "GroupTerminatingInstances")


def worker_group_name(cluster_name: str) -> str:
    return f"{cluster_name}-workers"


class ClusterNodes(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        head_template: ec2.LaunchTemplate,
        worker_template: ec2.LaunchTemplate,
        worker_count: int,
        head_patch_group: str,
        subnet_id: str,
        placement_group_name: Optional[str],
        topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id)
        # Monitoring repeats the launch template's setting so it is visible on the instance itself.
        self.head = ec2.CfnInstance(
            self, "Head", monitoring=True,
            launch_template=ec2.CfnInstance.LaunchTemplateSpecificationProperty(
                launch_template_id=head_template.launch_template_id, version=head_template.latest_version_number,
            ),
        )
        Tags.of(self.head).add(ROLE_TAG, "head")
        Tags.of(self.head).add("Name", f"{cluster_name}-head")
        Tags.of(self.head).add(PATCH_GROUP_TAG, head_patch_group)

        self.worker_group_name = worker_group_name(cluster_name)
        self.workers = autoscaling.CfnAutoScalingGroup(
            self, "Workers",
            auto_scaling_group_name=self.worker_group_name,
            min_size=str(worker_count), max_size=str(worker_count), desired_capacity=str(worker_count),
            launch_template=autoscaling.CfnAutoScalingGroup.LaunchTemplateSpecificationProperty(
                launch_template_id=worker_template.launch_template_id,
                version=worker_template.latest_version_number,
            ),
            vpc_zone_identifier=[subnet_id],
            placement_group=placement_group_name,
            health_check_type="EC2",
            health_check_grace_period=int(HEALTH_CHECK_GRACE.to_seconds()),
            instance_maintenance_policy=autoscaling.CfnAutoScalingGroup.InstanceMaintenancePolicyProperty(
                min_healthy_percentage=MIN_HEALTHY_PERCENT, max_healthy_percentage=MAX_HEALTHY_PERCENT,
            ),
            metrics_collection=[autoscaling.CfnAutoScalingGroup.MetricsCollectionProperty(
                granularity="1Minute", metrics=list(GROUP_METRICS),
            )],
            notification_configurations=[autoscaling.CfnAutoScalingGroup.NotificationConfigurationProperty(
                topic_arn=topic.topic_arn, notification_types=list(SCALING_NOTIFICATIONS),
            )],
        )
        Tags.of(self.workers).add(ROLE_TAG, "worker")
        Tags.of(self.workers).add("Name", f"{cluster_name}-worker")
        Validations.of(self).acknowledge(
            Acknowledgment(
                id="AwsSolutions-EC29",
                reason="Termination protection would make `cdk destroy` fail and block the AMI rollover, which "
                "replaces nodes; nodes hold no state (checkpoints live in the retained bucket).",
            ),
        )
