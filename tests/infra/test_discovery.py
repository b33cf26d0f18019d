"""Cluster discovery against moto: stack outputs from CloudFormation, nodes from EC2 tags."""

from __future__ import annotations

import json
from contextlib import contextmanager

import boto3
import pytest
from moto import mock_aws

from ddlc.errors import UserError
from ddlc.infra import discovery

REGION = "us-east-1"


FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION}


@contextmanager
def fake_account():
    """An in-process moto account with fake credentials (and no profile that could reach real AWS)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in FAKE_ENV.items():
            patch.setenv(key, value)
        patch.delenv("AWS_PROFILE", raising=False)
        with mock_aws():
            yield


@pytest.fixture(scope="module")
def aws():
    """One moto account per module (moto's first EC2 call costs seconds); clusters differ by name."""
    with fake_account():
        clusters = {
            "prod": deploy_fake_cluster("ddlc-prod"),
            "dev": deploy_fake_cluster("ddlc-dev", workers=2, instance_type="g5.xlarge"),
            "degraded": deploy_fake_cluster("ddlc-degraded"),
        }
        boto3.client("ec2", region_name=REGION).stop_instances(InstanceIds=[clusters["degraded"]["workers"][2]])
        yield clusters


def deploy_fake_cluster(name: str = "ddlc-prod", workers: int = 3, instance_type: str = "p4d.24xlarge") -> dict:
    """A stand-in for `cdk deploy`: a stack with the real output keys and tagged instances."""
    ec2 = boto3.client("ec2", region_name=REGION)
    image = "ami-12c6146b"  # one of moto's built-in images

    def launch(role: str, itype: str, index: int | None = None) -> str:
        tags = [{"Key": "ddlc:cluster", "Value": name}, {"Key": "role", "Value": role},
                {"Key": "project", "Value": "ddlc"}]
        if index is not None:
            tags.append({"Key": "ddlc:node-index", "Value": str(index)})
        result = ec2.run_instances(ImageId=image, InstanceType=itype, MinCount=1, MaxCount=1,
                                   TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
        return result["Instances"][0]["InstanceId"]

    head = launch("head", "m6i.xlarge")
    # Launch out of order: rank order must come from the node-index tag, not launch order.
    worker_ids = {index: launch("worker", instance_type, index) for index in reversed(range(workers))}
    connect = f"aws ssm start-session --target {head} --region {REGION}"
    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {
            "HeadNodeId": {"Value": head},
            "ConnectCommand": {"Value": connect},
            "CheckpointBucketName": {"Value": "ddlc-prod-checkpoints"},
            "ClusterName": {"Value": name},
        },
    }
    boto3.client("cloudformation", region_name=REGION).create_stack(StackName=name, TemplateBody=json.dumps(template))
    return {"head": head, "workers": worker_ids, "connect": connect}


def test_stack_outputs_and_nodes(aws):
    cluster = aws["prod"]
    stack = discovery.describe_stack("ddlc-prod", REGION)
    assert stack.status == "CREATE_COMPLETE"
    assert stack.head_node_id == cluster["head"]
    assert stack.connect_command == cluster["connect"]
    nodes = discovery.list_nodes("ddlc-prod", REGION)
    assert [n.role for n in nodes] == ["head", "worker", "worker", "worker"]
    assert [n.instance_id for n in nodes[1:]] == [cluster["workers"][i] for i in range(3)]
    assert nodes[0].gpus == 0 and all(n.gpus == 8 for n in nodes[1:])


def test_hostfile_in_rank_order_with_slots(aws, tmp_path):
    cluster = aws["prod"]
    ec2 = boto3.client("ec2", region_name=REGION)
    ips = {i: ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
           for i, iid in cluster["workers"].items()}
    path = tmp_path / "nested" / "hostfile"
    workers = discovery.write_hostfile("ddlc-prod", REGION, path, expect=3)
    assert path.read_text() == "".join(f"{ips[i]} slots=8\n" for i in range(3))
    assert workers[0].private_ip == ips[0]


def test_other_clusters_and_stopped_nodes_are_left_out(aws, tmp_path):
    workers = discovery.write_hostfile("ddlc-degraded", REGION, tmp_path / "hostfile")
    assert [w.instance_id for w in workers] == [aws["degraded"]["workers"][i] for i in (0, 1)]
    with pytest.raises(UserError, match="2 of 3 worker nodes running"):
        discovery.write_hostfile("ddlc-degraded", REGION, tmp_path / "hostfile", expect=3)
    dev = discovery.write_hostfile("ddlc-dev", REGION, tmp_path / "dev-hostfile")
    assert (tmp_path / "dev-hostfile").read_text().count("slots=1\n") == len(dev) == 2


def test_group_workers_without_index_are_found_and_ordered_by_address(aws, tmp_path):
    """Workers of the Auto Scaling group carry no node-index (a replacement could not know its own): they are
    found by the propagated tags and ordered by private address, so every node writes the same hostfile."""
    ec2 = boto3.client("ec2", region_name=REGION)
    tags = [{"Key": "ddlc:cluster", "Value": "ddlc-asg"}, {"Key": "role", "Value": "worker"},
            {"Key": "aws:autoscaling:groupName", "Value": "ddlc-asg-workers"}]
    launched = ec2.run_instances(ImageId="ami-12c6146b", InstanceType="p4d.24xlarge", MinCount=3, MaxCount=3,
                                 TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"]
    ips = sorted((i["PrivateIpAddress"] for i in launched), key=lambda ip: tuple(map(int, ip.split("."))))
    workers = discovery.write_hostfile("ddlc-asg", REGION, tmp_path / "hostfile", expect=3)
    assert [w.private_ip for w in workers] == ips
    assert (tmp_path / "hostfile").read_text() == "".join(f"{ip} slots=8\n" for ip in ips)


def test_missing_stack_and_empty_cluster_are_user_errors(aws, tmp_path):
    with pytest.raises(UserError, match=r"no stack 'ddlc-qa' in us-east-1: deploy it with"):
        discovery.describe_stack("ddlc-qa", REGION)
    with pytest.raises(UserError, match="has no running worker nodes"):
        discovery.write_hostfile("ddlc-qa", REGION, tmp_path / "hostfile")


def test_no_credentials_is_a_user_error(monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(UserError, match="no AWS credentials found"):
        discovery.describe_stack("ddlc-prod", REGION)


def test_region_is_required(monkeypatch, tmp_path):
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(UserError, match="no AWS region"):
        discovery.resolve_region(None)
