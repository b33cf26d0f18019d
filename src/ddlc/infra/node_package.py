"""The ddlc package asset and the SSM parameter that tells the nodes where it is (see package_asset.py)."""

from __future__ import annotations

from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from ddlc.infra.node_role import NodeRole
from ddlc.infra.package_asset import build_node_package


def package_parameter_name(environment: str) -> str:
    return f"/ddlc/{environment}/node-package"


class NodePackage(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, environment: str, role: NodeRole) -> None:
        super().__init__(scope, construct_id)
        self.directory = build_node_package()
        self.asset = s3_assets.Asset(self, "Asset", path=str(self.directory))
        self.parameter_name = package_parameter_name(environment)
        self.parameter = ssm.StringParameter(
            self, "Location", parameter_name=self.parameter_name,
            description="s3:// URL of the ddlc package (wheel + pinned requirements) the nodes install at boot",
            string_value=f"s3://{self.asset.s3_bucket_name}/{self.asset.s3_object_key}",
        )
        role.allow_read_objects(self.asset.bucket, self.asset.s3_object_key)
        role.role.add_to_policy(iam.PolicyStatement(
            actions=["ssm:GetParameter"], resources=[self.parameter.parameter_arn],
        ))
