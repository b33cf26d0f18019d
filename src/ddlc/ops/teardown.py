"""What `ddlc cluster down` deletes and what it leaves behind, read from the stack `cdk destroy` would act on.

The plan synthesizes the environment's stack from cdk.json (offline, no AWS calls) and sorts its resources by
their CloudFormation DeletionPolicy: `Retain` survives the destroy (the prod checkpoint bucket, its logs, the
Lustre file system and KMS key when `retain_data` is true), everything else is deleted. Nothing is hard-coded
here: change a removal policy in ddlc.infra and the confirmation changes with it.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ddlc.errors import UserError

# Friendly names for the resource types an operator cares about when reading the confirmation.
RESOURCE_LABELS = {
    "AWS::EC2::Instance": "EC2 instance",
    "AWS::AutoScaling::AutoScalingGroup": "Auto Scaling group (GPU workers)",
    "AWS::SecretsManager::Secret": "Secrets Manager secret",
    "AWS::S3::Bucket": "S3 bucket",
    "AWS::FSx::FileSystem": "FSx for Lustre file system",
    "AWS::Logs::LogGroup": "CloudWatch log group",
    "AWS::KMS::Key": "KMS key",
    "AWS::SNS::Topic": "SNS topic",
    "AWS::EC2::VPC": "VPC",
    "AWS::EC2::NatGateway": "NAT gateway",
    "AWS::Budgets::Budget": "AWS Budget",
    "AWS::CloudWatch::Alarm": "CloudWatch alarm",
    "AWS::CloudWatch::Dashboard": "CloudWatch dashboard",
    "AWS::SSM::MaintenanceWindow": "SSM maintenance window",
    "AWS::EC2::PlacementGroup": "placement group",
}
# Custom resources that empty a bucket before CloudFormation deletes it (dev: retain_data false).
AUTO_DELETE_OBJECTS = "Custom::S3AutoDeleteObjects"


@dataclass(frozen=True)
class StackResource:
    logical_id: str
    type: str
    path: str  # construct path below the stack, e.g. Checkpoints/Bucket
    retained: bool
    emptied_first: bool = False  # a bucket whose objects are deleted by the stack before the bucket

    @property
    def label(self) -> str:
        return RESOURCE_LABELS.get(self.type, self.type)


@dataclass
class TeardownPlan:
    environment: str
    stack_name: str
    region: str
    command: list[str]
    deleted: list[StackResource] = field(default_factory=list)
    retained: list[StackResource] = field(default_factory=list)

    @property
    def shell_command(self) -> str:
        return shlex.join(self.command)

    def describe(self) -> str:
        """The text shown before the confirmation prompt."""
        lines = [f"`{self.shell_command}` deletes stack {self.stack_name} ({self.region}):"]
        by_type: dict[str, list[StackResource]] = defaultdict(list)
        for resource in self.deleted:
            by_type[resource.type].append(resource)
        notable = [t for t in RESOURCE_LABELS if t in by_type]
        for resource_type in notable:
            for resource in by_type.pop(resource_type):
                extra = " (and every object in it)" if resource.emptied_first else ""
                lines.append(f"  - {resource.label} {resource.path}{extra}")
        if by_type:
            rest = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_type.items()))
            lines.append(f"  - and {sum(map(len, by_type.values()))} supporting resources: {rest}")
        if self.retained:
            lines.append("Retained (DeletionPolicy Retain: they stay, and keep costing, until you delete them):")
            lines += [f"  + {r.label} {r.path}" for r in self.retained]
        else:
            lines.append("Nothing is retained: checkpoints in this environment's bucket are deleted too.")
        return "\n".join(lines)


def destroy_command(environment: str) -> list[str]:
    return ["npx", "cdk", "destroy", "--context", f"environment={environment}", "--force"]


def _construct_path(node_path: str, stack_name: str) -> str:
    path = node_path.removeprefix(f"{stack_name}/")
    return path.removesuffix("/Resource")


def resources_from_template(template: dict, paths: dict[str, str]) -> list[StackResource]:
    """Classify a synthesized template's resources; `paths` maps logical ids to construct paths."""
    resources = template.get("Resources", {})
    emptied = set()
    for body in resources.values():
        if body.get("Type") == AUTO_DELETE_OBJECTS:
            bucket = body.get("Properties", {}).get("BucketName", {})
            if isinstance(bucket, dict) and "Ref" in bucket:
                emptied.add(bucket["Ref"])
    out = []
    for logical_id, body in resources.items():
        kind = body["Type"]
        if kind == AUTO_DELETE_OBJECTS:
            continue  # shown as "(and every object in it)" on its bucket
        out.append(StackResource(
            logical_id, kind, paths.get(logical_id, logical_id),
            retained=body.get("DeletionPolicy") == "Retain", emptied_first=logical_id in emptied,
        ))
    return out


def synthesize(environment: str, cdk_json: Path) -> tuple[dict, dict[str, str], str, str]:
    """(template, logical id -> construct path, stack name, region) for one environment of cdk.json."""
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    from ddlc.infra.settings import load_environment, read_cdk_context

    context = read_cdk_context(cdk_json)
    settings = load_environment(context.get("environments"), environment)  # unknown env: UserError, exit 2
    try:
        from aws_cdk import App, CfnResource, Environment
    except ModuleNotFoundError as missing:
        raise UserError(f"`ddlc cluster down` needs {missing.name}: pip install 'ddlc[infra]'") from None
    from ddlc.infra.app import default_dashboards
    from ddlc.infra.stack import ClusterStack

    # The same stack `cdk destroy` synthesizes (feature flags from cdk.json's context, the standard dashboards),
    # without the cdk-nag pass.
    with tempfile.TemporaryDirectory(prefix="ddlc-down-") as outdir:
        app = App(context={**context, "environment": environment}, outdir=outdir)
        stack = ClusterStack(app, settings.stack_name, settings=settings, dashboards=default_dashboards(),
                             env=Environment(region=settings.region))
        template = app.synth().get_stack_by_name(stack.stack_name).template
        paths = {
            stack.resolve(child.logical_id): _construct_path(child.node.path, stack.stack_name)
            for child in stack.node.find_all()
            if isinstance(child, CfnResource)
        }
    return template, paths, settings.stack_name, settings.region


def plan_teardown(environment: str, cdk_json: Path | str = "cdk.json") -> TeardownPlan:
    cdk_json = Path(cdk_json)
    if not cdk_json.is_file():
        raise UserError(f"{cdk_json.absolute()}: not found; run `ddlc cluster down` from the ddlc repository root")
    template, paths, stack_name, region = synthesize(environment, cdk_json)
    resources = resources_from_template(template, paths)
    return TeardownPlan(
        environment=environment, stack_name=stack_name, region=region, command=destroy_command(environment),
        deleted=[r for r in resources if not r.retained], retained=[r for r in resources if r.retained],
    )


def validate_environment(environment: str, cdk_json: Path | str = "cdk.json") -> None:
    """Fail fast (before any synth) on a missing cdk.json or an unknown environment."""
    from ddlc.infra.settings import read_cdk_context

    cdk_json = Path(cdk_json)
    if not cdk_json.is_file():
        raise UserError(f"{cdk_json.absolute()}: not found; run `ddlc cluster down` from the ddlc repository root")
    environments = read_cdk_context(cdk_json).get("environments") or {}
    if environment not in environments:
        raise UserError(f"--env: unknown environment '{environment}'; valid choices: "
                        f"{', '.join(sorted(environments))}")
