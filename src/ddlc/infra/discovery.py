"""Find a deployed cluster: CloudFormation outputs for the stack, EC2 tags for its nodes.

Used by `ddlc cluster` on an operator's machine and on the nodes themselves (the hostfile timer). Needs
only boto3: no CDK import here. Workers are the instances of the cluster's Auto Scaling group: their tags
(`ddlc:cluster`, `role=worker`) propagate from the group, so a replacement is found like the node it replaced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
from botocore.parsers import ResponseParserError

from ddlc.errors import UserError
from ddlc.infra.instance_types import GPU_INSTANCE_TYPES

# Tag and output names: the contract with ddlc.infra.stack / ddlc.infra.nodes (kept literal here so this
# module never imports aws_cdk).
CLUSTER_TAG = "ddlc:cluster"
ROLE_TAG = "role"
NODE_INDEX_TAG = "ddlc:node-index"
OUTPUT_HEAD_NODE_ID = "HeadNodeId"
OUTPUT_CONNECT_COMMAND = "ConnectCommand"
OUTPUT_WORKER_GROUP = "WorkerGroupName"
LIVE_STATES = ("pending", "running", "stopping", "stopped")


@dataclass(frozen=True)
class ClusterNode:
    instance_id: str
    role: str
    index: Optional[int]
    instance_type: str
    state: str
    private_ip: Optional[str]
    private_dns_name: Optional[str] = None  # ip-10-42-0-17.ec2.internal: its first label is the EC2 hostname

    @property
    def gpus(self) -> int:
        spec = GPU_INSTANCE_TYPES.get(self.instance_type)
        return spec.gpus if spec else 0


@dataclass
class StackInfo:
    name: str
    status: str
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def head_node_id(self) -> str:
        return self._output(OUTPUT_HEAD_NODE_ID)

    @property
    def connect_command(self) -> str:
        return self._output(OUTPUT_CONNECT_COMMAND)

    @property
    def worker_group(self) -> str:
        return self._output(OUTPUT_WORKER_GROUP)

    def _output(self, key: str) -> str:
        if key not in self.outputs:
            raise UserError(f"stack '{self.name}' has no output '{key}' (status {self.status}); is it a ddlc cluster?")
        return self.outputs[key]


def resolve_region(region: Optional[str]) -> str:
    """Explicit region, else AWS_REGION / AWS_DEFAULT_REGION / the profile's region."""
    resolved = region or os.environ.get("AWS_REGION") or boto3.session.Session().region_name
    if not resolved:
        raise UserError("no AWS region: pass --region, or set AWS_REGION / a default region in your AWS profile")
    return resolved


def _client(service: str, region: str) -> Any:
    try:
        return boto3.session.Session(region_name=region).client(service)
    except (BotoCoreError, NoRegionError) as error:
        raise UserError(f"AWS {service} client for region '{region}': {error}") from None


def _aws_error(action: str, error: Exception) -> UserError:
    if isinstance(error, NoCredentialsError):
        return UserError(f"{action}: no AWS credentials found (set AWS_PROFILE or run `aws configure`/`aws sso login`)")
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        return UserError(f"{action}: {info.get('Code', 'error')}: {info.get('Message', str(error))}")
    return UserError(f"{action}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")


def has_aws_credentials() -> bool:
    """Whether boto3 finds any credentials (environment, profile, SSO, instance role), without calling AWS."""
    import boto3

    try:
        return boto3.session.Session().get_credentials() is not None
    except BotoCoreError:
        return False


def describe_stack(stack_name: str, region: str) -> StackInfo:
    cloudformation = _client("cloudformation", region)
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        message = error.response.get("Error", {}).get("Message", "")
        if "does not exist" in message:
            raise UserError(
                f"no stack '{stack_name}' in {region}: deploy it with `npx cdk deploy --context environment=...`"
            ) from None
        raise _aws_error(f"describing stack '{stack_name}'", error) from None
    except (BotoCoreError, NoCredentialsError) as error:
        raise _aws_error(f"describing stack '{stack_name}'", error) from None
    stack = stacks[0]
    outputs = {item["OutputKey"]: item["OutputValue"] for item in stack.get("Outputs", [])}
    return StackInfo(name=stack_name, status=stack["StackStatus"], outputs=outputs)


def list_nodes(cluster_name: str, region: str) -> list[ClusterNode]:
    """Every live instance tagged with the cluster's name: head first, then workers by index."""
    ec2 = _client("ec2", region)
    filters = [
        {"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster_name]},
        {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
    ]
    nodes: list[ClusterNode] = []
    try:
        for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
                    index = tags.get(NODE_INDEX_TAG)
                    nodes.append(
                        ClusterNode(
                            instance_id=instance["InstanceId"],
                            role=tags.get(ROLE_TAG, "unknown"),
                            index=int(index) if index is not None and index.isdigit() else None,
                            instance_type=instance["InstanceType"],
                            state=instance["State"]["Name"],
                            private_ip=instance.get("PrivateIpAddress"),
                            private_dns_name=instance.get("PrivateDnsName") or None,
                        )
                    )
    except (ClientError, BotoCoreError, NoCredentialsError) as error:
        raise _aws_error(f"listing nodes of '{cluster_name}'", error) from None
    return sorted(nodes, key=_rank_order)


def _rank_order(node: ClusterNode) -> tuple:
    """Head first, then workers: by `ddlc:node-index` where a node has one, else by private address (workers of
    the Auto Scaling group carry no index: a replacement must not need one), then by instance id."""
    index = node.index if node.index is not None else 1 << 30
    address = tuple(int(part) for part in node.private_ip.split(".")) if node.private_ip else (1 << 30,)
    return (node.role != "head", index, address, node.instance_id)


def running_workers(nodes: list[ClusterNode]) -> list[ClusterNode]:
    return [node for node in nodes if node.role == "worker" and node.state == "running" and node.private_ip]


def hostfile_text(workers: list[ClusterNode]) -> str:
    """`<ip> slots=<gpus>` per worker: the hostfile format both deepspeed and horovodrun read."""
    return "".join(f"{node.private_ip} slots={node.gpus}\n" for node in workers)


def write_hostfile(cluster_name: str, region: str, path: str | Path, expect: Optional[int] = None) -> list[ClusterNode]:
    """Write the hostfile for the running workers (rank order = node index) and return them."""
    workers = running_workers(list_nodes(cluster_name, region))
    if not workers:
        raise UserError(f"cluster '{cluster_name}' in {region} has no running worker nodes")
    if expect is not None and len(workers) < expect:
        raise UserError(f"cluster '{cluster_name}': {len(workers)} of {expect} worker nodes running")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(target.name + ".tmp")
        staging.write_text(hostfile_text(workers))
        staging.replace(target)  # readers never see a half-written hostfile
    except OSError as error:
        raise UserError(f"hostfile {target}: {error.strerror or error}") from None
    return workers


def start_worker_refresh(group_name: str, region: str) -> str:
    """Start an instance refresh of the worker group: every worker is replaced from the group's current launch
    template, terminating before launching (min healthy 0 %, max healthy 100 %), so it fits inside a full
    capacity reservation. Workers already on the current template are skipped. Returns the refresh id."""
    autoscaling = _client("autoscaling", region)
    try:
        response = autoscaling.start_instance_refresh(
            AutoScalingGroupName=group_name, Strategy="Rolling",
            Preferences={"MinHealthyPercentage": 0, "MaxHealthyPercentage": 100, "SkipMatching": True},
        )
    except (ClientError, BotoCoreError, NoCredentialsError, ResponseParserError) as error:
        raise _aws_error(f"starting an instance refresh of '{group_name}'", error) from None
    return response["InstanceRefreshId"]
