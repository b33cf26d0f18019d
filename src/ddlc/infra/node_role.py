"""The IAM role the nodes run as: SSM sessions, CloudWatch agent, and the checkpoint bucket only."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct


class NodeRole(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, bucket: s3.IBucket) -> None:
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
        bucket.grant_read_write(self.role)
        # Nodes find their peers by tag to write the hostfile; Describe* has no resource-level scoping.
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["ec2:DescribeInstances"], resources=["*"])
        )
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
            *[
                Acknowledgment(
                    id=wildcard.format(f"Action::s3:{action}"),
                    reason="Object-level actions from grantReadWrite, scoped to the checkpoint bucket only.",
                )
                for action in ("Abort*", "DeleteObject*", "GetBucket*", "GetObject*", "List*")
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
        )
