"""The SNS topic every alarm and budget notification goes to, encrypted and TLS-only, mailed to the team."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

# Services that publish to the topic and so must be able to use its key.
PUBLISHERS = ("cloudwatch.amazonaws.com", "budgets.amazonaws.com")


class AlertTopic(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, email: str, removal_policy: RemovalPolicy) -> None:
        super().__init__(scope, construct_id)
        account = Stack.of(self).account
        self.key = kms.Key(
            self, "Key", enable_key_rotation=True, description="ddlc alert topic encryption",
            removal_policy=removal_policy,  # DESTROY schedules deletion (after the KMS waiting period)
        )
        self.topic = sns.Topic(self, "Topic", master_key=self.key, enforce_ssl=True,
                               display_name="ddlc cluster alerts")
        for service in PUBLISHERS:
            self.key.add_to_resource_policy(
                iam.PolicyStatement(
                    principals=[iam.ServicePrincipal(service)],
                    actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                    resources=["*"],  # in a key policy, "*" means this key
                    conditions={"StringEquals": {"aws:SourceAccount": account}},
                )
            )
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("budgets.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={"StringEquals": {"aws:SourceAccount": account}},
            )
        )
        self.topic.add_subscription(subscriptions.EmailSubscription(email))
