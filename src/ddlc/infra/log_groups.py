"""Log groups with retention: node logs (bootstrap, agent) and training logs."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_logs as logs
from constructs import Construct


class ClusterLogGroups(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        environment: str,
        retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.nodes = logs.LogGroup(
            self, "Nodes", log_group_name=f"/ddlc/{environment}/nodes",
            retention=retention, removal_policy=removal_policy,
        )
        self.training = logs.LogGroup(
            self, "Training", log_group_name=f"/ddlc/{environment}/training",
            retention=retention, removal_policy=removal_policy,
        )
