"""Optional FSx for Lustre file system linked to the checkpoint bucket (lazy import, export on change)."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_fsx as fsx
from aws_cdk import aws_s3 as s3
from constructs import Construct

from ddlc.infra.settings import LustreSettings


class LustreScratch(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: LustreSettings,
        vpc: ec2.IVpc,
        subnet: ec2.ISubnet,
        security_group: ec2.ISecurityGroup,
        bucket: s3.IBucket,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        bucket_uri = f"s3://{bucket.bucket_name}"
        self.file_system = fsx.LustreFileSystem(
            self,
            "FileSystem",
            vpc=vpc,
            vpc_subnet=subnet,
            security_group=security_group,
            storage_capacity_gib=settings.storage_capacity_gib,
            removal_policy=removal_policy,
            lustre_configuration=fsx.LustreConfiguration(
                deployment_type=fsx.LustreDeploymentType[settings.deployment_type],
                per_unit_storage_throughput=settings.per_unit_storage_throughput,
                import_path=bucket_uri,
                export_path=bucket_uri,
                auto_import_policy=fsx.LustreAutoImportPolicy.NEW_CHANGED_DELETED,
            ),
        )
