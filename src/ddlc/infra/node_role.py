"""The IAM role the nodes run as: SSM sessions, CloudWatch agent, the checkpoint bucket, and the few cluster
resources a node reads at boot (the ddlc package asset, the cluster ssh key) or acts on (its own worker group,
the alert topic the head node's Alertmanager publishes to).

Checkpoint objects can be overwritten and deleted (`s3:DeleteObject`, which leaves a noncurrent version behind)
but never deleted for good: no `s3:DeleteObjectVersion`, so versioning can undo a mistaken prune.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Token, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

# Object actions on checkpoints. Delete leaves a noncurrent version that the lifecycle rule expires later.
CHECKPOINT_OBJECT_ACTIONS = (
    "s3:GetObject", "s3:GetObjectAttributes", "s3:GetObjectTagging", "s3:PutObject", "s3:DeleteObject",
    "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
)
CHECKPOINT_BUCKET_ACTIONS = ("s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetBucketLocation")


def worker_group_arn(scope: Construct, group_name: str) -> str:
    """ARN of the worker Auto Scaling group by name (known before the group exists: no dependency cycle)."""
    stack = Stack.of(scope)
    return (f"arn:{stack.partition}:autoscaling:{stack.region}:{stack.account}:autoScalingGroup:*:"
            f"autoScalingGroupName/{group_name}")


class NodeRole(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, bucket: s3.IBucket, worker_group_name: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="ddlc cluster nodes: SSM core, CloudWatch agent, checkpoint bucket read/write",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore"),
                iam.ManagedPolicy.from_aws_managed_policy_name("CloudWatchAgentServerPolicy"),
            ],
        )
        self.role.add_to_policy(iam.PolicyStatement(
            actions=list(CHECKPOINT_BUCKET_ACTIONS), resources=[bucket.bucket_arn],
        ))
        self.role.add_to_policy(iam.PolicyStatement(
            actions=list(CHECKPOINT_OBJECT_ACTIONS), resources=[bucket.arn_for_objects("*")],
        ))
        # Nodes find their peers by tag to write the hostfile; Describe* has no resource-level scoping.
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["ec2:DescribeInstances"], resources=["*"])
        )
        # A worker whose health check keeps failing marks itself Unhealthy; the group then replaces it.
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["autoscaling:SetInstanceHealth"], resources=[worker_group_arn(self, worker_group_name)],
        ))
        region = "<AWS::Region>" if Token.is_unresolved(Stack.of(self).region) else Stack.of(self).region
        managed = "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/{}]"
        wildcard = "AwsSolutions-IAM5[{}]"
        Validations.of(self.role).acknowledge(
            *[
                Acknowledgment(
                    id=managed.format(policy),
                    reason=f"{policy} is the AWS-maintained minimum for {purpose}; a copy would only drift.",
                )
                for policy, purpose in (
                    ("AmazonSSMManagedInstanceCore", "Session Manager access"),
                    ("CloudWatchAgentServerPolicy", "the CloudWatch agent"),
                )
            ],
            Acknowledgment(
                id=wildcard.format(f"Resource::<{Stack.of(self).get_logical_id(bucket.node.default_child)}.Arn>/*"),
                reason="Checkpoints are objects of any name inside the checkpoint bucket; no other bucket.",
            ),
            Acknowledgment(
                id=wildcard.format("Resource::*"),
                reason="ec2:DescribeInstances (peer discovery by tag for the hostfile) has no resource-level "
                "permissions; it is the only action on '*'.",
            ),
            Acknowledgment(
                id=wildcard.format(
                    f"Resource::arn:<AWS::Partition>:autoscaling:{region}:<AWS::AccountId>:autoScalingGroup:*:"
                    f"autoScalingGroupName/{worker_group_name}"
                ),
                reason="The group's id part of the ARN is unknown before it exists; the name pins it to this "
                "cluster's worker group only.",
            ),
        )

    def allow_publish_alerts(self, topic: sns.ITopic, key: kms.IKey) -> None:
        """The head node's Alertmanager publishes to the alert topic: that topic only, and its KMS key (an
        encrypted topic needs the publisher to make a data key) for nothing else."""
        self.role.add_to_policy(iam.PolicyStatement(actions=["sns:Publish"], resources=[topic.topic_arn]))
        self.role.add_to_policy(iam.PolicyStatement(actions=["kms:GenerateDataKey", "kms:Decrypt"],
                                                    resources=[key.key_arn]))

    def allow_read_objects(self, bucket: s3.IBucket, key: str) -> None:
        """Read one object (the ddlc package asset in the CDK assets bucket)."""
        self.role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[bucket.arn_for_objects(key)]))
