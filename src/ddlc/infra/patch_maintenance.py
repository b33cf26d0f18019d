"""OS patching for the head node: an SSM patch baseline and a monthly maintenance window.

GPU workers are not patched in place (a kernel update can break the NVIDIA/EFA driver stack mid-run);
they get new AMIs quarterly instead — see docs/infrastructure.md.
"""

from __future__ import annotations

from aws_cdk import aws_ssm as ssm
from constructs import Construct

# First Sunday of every month, 04:00 UTC.
MONTHLY_SCHEDULE = "cron(0 4 ? * SUN#1 *)"


class PatchMaintenance(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        patch_group: str,
        head_instance_id: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.baseline = ssm.CfnPatchBaseline(
            self,
            "Baseline",
            name=f"{cluster_name}-head",
            description="ddlc head node: security and important Ubuntu updates",
            operating_system="UBUNTU",
            patch_groups=[patch_group],
            approval_rules=ssm.CfnPatchBaseline.RuleGroupProperty(
                patch_rules=[
                    ssm.CfnPatchBaseline.RuleProperty(
                        compliance_level="HIGH",
                        patch_filter_group=ssm.CfnPatchBaseline.PatchFilterGroupProperty(
                            patch_filters=[
                                ssm.CfnPatchBaseline.PatchFilterProperty(key="PRODUCT", values=["*"]),
                                ssm.CfnPatchBaseline.PatchFilterProperty(key="SECTION", values=["*"]),
                                ssm.CfnPatchBaseline.PatchFilterProperty(
                                    key="PRIORITY", values=["Required", "Important", "Standard"]
                                ),
                            ]
                        ),
                    )
                ]
            ),
        )
        self.window = ssm.CfnMaintenanceWindow(
            self,
            "Window",
            name=f"{cluster_name}-monthly-patching",
            description="Monthly OS patching of the ddlc head node",
            schedule=MONTHLY_SCHEDULE,
            schedule_timezone="UTC",
            duration=3,
            cutoff=1,
            allow_unassociated_targets=False,
        )
        self.target = ssm.CfnMaintenanceWindowTarget(
            self,
            "HeadNodeTarget",
            window_id=self.window.ref,
            resource_type="INSTANCE",
            targets=[ssm.CfnMaintenanceWindowTarget.TargetsProperty(key="InstanceIds", values=[head_instance_id])],
        )
        self.task = ssm.CfnMaintenanceWindowTask(
            self,
            "PatchTask",
            window_id=self.window.ref,
            task_arn="AWS-RunPatchBaseline",
            task_type="RUN_COMMAND",
            priority=1,
            max_concurrency="1",
            max_errors="1",
            targets=[ssm.CfnMaintenanceWindowTask.TargetProperty(key="WindowTargetIds", values=[self.target.ref])],
            task_invocation_parameters=ssm.CfnMaintenanceWindowTask.TaskInvocationParametersProperty(
                maintenance_window_run_command_parameters=ssm.CfnMaintenanceWindowTask.MaintenanceWindowRunCommandParametersProperty(
                    parameters={"Operation": ["Install"], "RebootOption": ["RebootIfNeeded"]},
                )
            ),
        )
