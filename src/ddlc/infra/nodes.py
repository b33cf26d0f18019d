"""The cluster's instances: one head node (login + launcher, no GPU) and `node_count` GPU workers.

Every instance is tagged for discovery (`ddlc:cluster`, `role`, `ddlc:node-index`) and cost allocation
(`project`, `environment`, `role`). Changing a launch template version replaces the instances: that is
how the quarterly AMI / driver rollover reaches the GPU nodes (see docs/infrastructure.md).
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Tags, Validations
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

ROLE_TAG = "role"
NODE_INDEX_TAG = "ddlc:node-index"
CLUSTER_TAG = "ddlc:cluster"
PATCH_GROUP_TAG = "Patch Group"


def _from_template(template: ec2.LaunchTemplate) -> ec2.CfnInstance.LaunchTemplateSpecificationProperty:
    return ec2.CfnInstance.LaunchTemplateSpecificationProperty(
        launch_template_id=template.launch_template_id,
        version=template.latest_version_number,
    )


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
    ) -> None:
        super().__init__(scope, construct_id)
        # Monitoring repeats the launch template's setting so it is visible on the instance itself.
        self.head = ec2.CfnInstance(self, "Head", launch_template=_from_template(head_template), monitoring=True)
        Tags.of(self.head).add(ROLE_TAG, "head")
        Tags.of(self.head).add("Name", f"{cluster_name}-head")
        Tags.of(self.head).add(PATCH_GROUP_TAG, head_patch_group)

        self.workers: list[ec2.CfnInstance] = []
        for index in range(worker_count):
            worker = ec2.CfnInstance(
                self, f"Worker{index}", launch_template=_from_template(worker_template), monitoring=True
            )
            Tags.of(worker).add(ROLE_TAG, "worker")
            Tags.of(worker).add(NODE_INDEX_TAG, str(index))
            Tags.of(worker).add("Name", f"{cluster_name}-worker-{index}")
            self.workers.append(worker)
        Validations.of(self).acknowledge(
            Acknowledgment(
                id="AwsSolutions-EC29",
                reason="Termination protection would make `cdk destroy` fail and block the AMI rollover, which "
                "replaces nodes; nodes hold no state (checkpoints live in the retained bucket).",
            )
        )

    @property
    def all_instances(self) -> list[ec2.CfnInstance]:
        return [self.head, *self.workers]
