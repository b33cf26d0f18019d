"""The synthesized prod template, deployed into the session's moto server (CloudFormation on 127.0.0.1), then `ddlc cluster`
status|hosts|connect --dry-run|refresh --dry-run|down --dry-run run against it as processes.

Only what moto cannot do is changed: the Deep Learning AMI's public SSM parameter (moto refuses `/aws/...`
names it does not ship) points at a public AMI parameter moto has, SSM parameter and KMS key tags are given in
the shape moto reads, the head instance repeats its launch template's image, type and subnet (moto's
AWS::EC2::Instance ignores LaunchTemplate), and the CDK bootstrap version parameter is put into moto's SSM. Resource types moto has no CloudFormation support for (alarms, budget, FSx, SSM
maintenance, the secret, ...) are skipped by moto itself; the test lists them so a new one is a conscious
change.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import boto3
import pytest

from tests.infra.conftest import REPO_ROOT, resources, synth

REGION = "us-east-1"
MOTO_PUBLIC_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/amzn2-ami-hvm-x86_64-gp2"
# What moto 5.2 cannot create from a template (it logs "No Moto CloudFormation support" and skips them).
NOT_IN_MOTO = {
    "AWS::Budgets::Budget", "AWS::CloudWatch::Alarm", "AWS::EC2::PlacementGroup", "AWS::EC2::SecurityGroupEgress",
    "AWS::FSx::FileSystem", "AWS::Logs::MetricFilter", "AWS::S3::BucketPolicy", "AWS::SNS::Subscription",
    "AWS::SNS::TopicPolicy", "AWS::SSM::MaintenanceWindow", "AWS::SSM::MaintenanceWindowTarget",
    "AWS::SSM::MaintenanceWindowTask", "AWS::SSM::PatchBaseline", "AWS::SecretsManager::ResourcePolicy",
    "AWS::SecretsManager::Secret", "AWS::CloudWatch::Dashboard", "AWS::EC2::FlowLog",
}


def moto_ready(template: dict) -> dict:
    """The template without the resources moto cannot create (references to them become placeholder strings,
    as moto would otherwise resolve them to nothing) and with the substitutions of the module docstring."""
    ready = copy.deepcopy(template)
    stripped = {k for k, body in ready["Resources"].items() if body["Type"] in NOT_IN_MOTO}

    def replace(value):
        if isinstance(value, dict):
            if set(value) == {"Ref"} and value["Ref"] in stripped:
                return f"arn:aws:stripped:{REGION}:123456789012:{value['Ref']}"
            if set(value) == {"Fn::GetAtt"} and value["Fn::GetAtt"][0] in stripped:
                return f"stripped-{value['Fn::GetAtt'][0]}-{value['Fn::GetAtt'][1]}"
            return {k: replace(v) for k, v in value.items()}
        if isinstance(value, list):
            return [replace(v) for v in value]
        return value

    ready["Resources"] = {k: replace(v) for k, v in ready["Resources"].items() if k not in stripped}
    ready["Outputs"] = replace(ready.get("Outputs", {}))
    for body in ready["Resources"].values():
        depends = body.get("DependsOn")
        if isinstance(depends, list):
            body["DependsOn"] = [d for d in depends if d not in stripped]
        elif depends in stripped:
            del body["DependsOn"]
    for parameter in ready["Parameters"].values():
        if parameter["Type"].startswith("AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"):
            parameter["Default"] = MOTO_PUBLIC_AMI_PARAMETER
    for body in ready["Resources"].values():
        # CloudFormation's AWS::SSM::Parameter Tags is a map; moto 5.2 only reads a list of Key/Value.
        if body["Type"] == "AWS::SSM::Parameter" and isinstance(body["Properties"].get("Tags"), dict):
            body["Properties"]["Tags"] = [{"Key": k, "Value": v} for k, v in body["Properties"]["Tags"].items()]
        # moto 5.2's AWS::EC2::Instance ignores LaunchTemplate: copy what it needs from the head's template.
        if body["Type"] == "AWS::EC2::Instance" and "LaunchTemplate" in body["Properties"]:
            template_id = body["Properties"]["LaunchTemplate"]["LaunchTemplateId"]["Ref"]
            data = ready["Resources"][template_id]["Properties"]["LaunchTemplateData"]
            body["Properties"].setdefault("ImageId", data["ImageId"])
            body["Properties"].setdefault("InstanceType", data["InstanceType"])
            body["Properties"].setdefault("SubnetId", data["NetworkInterfaces"][0]["SubnetId"])
        # moto 5.2 reads KMS key tags as TagKey/TagValue (CloudFormation's are Key/Value).
        if body["Type"] == "AWS::KMS::Key" and body["Properties"].get("Tags"):
            body["Properties"]["Tags"] = [{"TagKey": t["Key"], "TagValue": t["Value"]} for t in body["Properties"]["Tags"]]
    return ready


@pytest.fixture(scope="module")
def deployed(moto):
    """The stack deployed once into the session's moto server. Stack ddlc-prod, its group ddlc-prod-workers and
    the CDK bootstrap parameter are this module's alone (tests/cli/test_cluster.py's fake cluster is
    ddlc-clitest); nodes are found by their ddlc:cluster tag, so other tests' instances there do not count."""
    from ddlc.infra.app import default_dashboards

    synthesized = synth("prod", dashboards=tuple(default_dashboards()))
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
           "AWS_ENDPOINT_URL": moto.url, "AWS_EC2_METADATA_DISABLED": "true"}
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)

    def client(service: str):
        return session.client(service, endpoint_url=env["AWS_ENDPOINT_URL"])

    client("ssm").put_parameter(Name="/cdk-bootstrap/hnb659fds/version", Value="30", Type="String")
    cloudformation = client("cloudformation")
    cloudformation.create_stack(
        StackName="ddlc-prod", TemplateBody=json.dumps(moto_ready(synthesized.template_json)),
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    deadline = time.monotonic() + 120
    while (stack := cloudformation.describe_stacks(StackName="ddlc-prod")["Stacks"][0])["StackStatus"].endswith(
            "IN_PROGRESS"):
        assert time.monotonic() < deadline, stack
        time.sleep(0.5)
    return {"env": env, "client": client, "stack": stack, "synthesized": synthesized}


def ddlc(*args: str, env: dict, cwd=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "ddlc", "cluster", *args], cwd=cwd or REPO_ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)


def test_stack_deploys_and_skips_only_what_moto_cannot_create(deployed):
    assert deployed["stack"]["StackStatus"] == "CREATE_COMPLETE", deployed["stack"]
    template = deployed["synthesized"].template_json
    created = {r["LogicalResourceId"] for r in deployed["client"]("cloudformation").describe_stack_resources(
        StackName="ddlc-prod")["StackResources"]}
    skipped = {body["Type"] for logical_id, body in template["Resources"].items() if logical_id not in created}
    assert skipped <= NOT_IN_MOTO, skipped - NOT_IN_MOTO
    assert len(created) >= len(template["Resources"]) // 2
    for kind in ("AWS::AutoScaling::AutoScalingGroup", "AWS::EC2::Instance", "AWS::EC2::LaunchTemplate",
                 "AWS::SSM::Parameter", "AWS::IAM::Role"):
        assert kind not in skipped


def test_worker_group_launches_node_count_tagged_workers(deployed):
    groups = deployed["client"]("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=["ddlc-prod-workers"])["AutoScalingGroups"]
    (group,) = groups
    assert group["MinSize"] == group["MaxSize"] == group["DesiredCapacity"] == 4
    assert len(group["Instances"]) == 4
    reservations = deployed["client"]("ec2").describe_instances(
        InstanceIds=[i["InstanceId"] for i in group["Instances"]])["Reservations"]
    for instance in (i for r in reservations for i in r["Instances"]):
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        assert tags.get("ddlc:cluster") == "ddlc-prod" and tags.get("role") == "worker", tags


def test_status_hosts_connect_refresh_against_the_deployed_stack(deployed, tmp_path):
    env = deployed["env"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in deployed["stack"]["Outputs"]}
    status = ddlc("status", "--env", "prod", env=env)
    assert status.returncode == 0, status.stderr
    assert "CREATE_COMPLETE" in status.stdout and outputs["HeadNodeId"] in status.stdout
    assert status.stdout.count(" worker ") == 4 and status.stdout.count(" head ") == 1

    hostfile = tmp_path / "hostfile"
    hosts = ddlc("hosts", "--env", "prod", "--output", str(hostfile), "--expect", "4", env=env)
    assert hosts.returncode == 0, hosts.stderr
    lines = hostfile.read_text().splitlines()
    assert len(lines) == 4 and all(line.endswith(" slots=8") for line in lines)
    assert hosts.stdout == f"MASTER_ADDR={lines[0].split()[0]}\n"

    connect = ddlc("connect", "--env", "prod", "--dry-run", env=env)
    assert connect.returncode == 0, connect.stderr
    assert connect.stdout.strip() == f"aws ssm start-session --target {outputs['HeadNodeId']} --region {REGION}"

    refresh = ddlc("refresh", "--env", "prod", "--dry-run", env=env)
    assert refresh.returncode == 0, refresh.stderr
    assert "start-instance-refresh" in refresh.stdout and "--auto-scaling-group-name ddlc-prod-workers" in refresh.stdout
    assert '"MinHealthyPercentage":0' in refresh.stdout
    # The real call reaches the group named by the stack (moto 5.2 has no instance refresh: a clean error).
    real = ddlc("refresh", "--env", "prod", env={**env, "AWS_MAX_ATTEMPTS": "1"})
    assert real.returncode == 2 and "Traceback" not in real.stderr, real.stderr
    assert real.stderr.startswith("error: starting an instance refresh of 'ddlc-prod-workers': ")
    assert len(real.stderr.strip().splitlines()) == 1


def test_down_dry_run_lists_every_deployed_resource(deployed):
    result = ddlc("down", "--env", "prod", "--dry-run", env=deployed["env"])
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing deleted" in result.stdout
    assert "- Auto Scaling group (GPU workers) Nodes/Workers" in result.stdout
    assert result.stdout.count("- CloudWatch dashboard ") == 4
    assert "+ S3 bucket Checkpoints/Bucket" in result.stdout
    template = deployed["synthesized"].template_json
    assert len(resources(template, "AWS::CloudWatch::Dashboard")) == 4


def test_set_instance_health_permission_matches_exactly_the_deployed_group(deployed):
    """The node role's autoscaling:SetInstanceHealth resource, resolved for this account, matches the ARN of the
    group the stack created and no other group's; marking a worker Unhealthy there is what the agent does."""
    from fnmatch import fnmatchcase

    template = deployed["synthesized"].template_json
    policy = next(p for k, p in resources(template, "AWS::IAM::Policy").items() if k.startswith("NodeRole"))
    (statement,) = [s for s in policy["Properties"]["PolicyDocument"]["Statement"]
                    if s["Action"] == "autoscaling:SetInstanceHealth"]
    parts = statement["Resource"]["Fn::Join"][1]
    values = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": "123456789012"}
    pattern = "".join(values[p["Ref"]] if isinstance(p, dict) else p for p in parts)

    autoscaling = deployed["client"]("autoscaling")
    (group,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["ddlc-prod-workers"])["AutoScalingGroups"]
    assert fnmatchcase(group["AutoScalingGroupARN"], pattern), (group["AutoScalingGroupARN"], pattern)
    for other in ("ddlc-dev-workers", "ddlc-prod-workers-2", "other"):
        assert not fnmatchcase(group["AutoScalingGroupARN"].replace("ddlc-prod-workers", other), pattern)

    worker = group["Instances"][0]["InstanceId"]
    autoscaling.set_instance_health(InstanceId=worker, HealthStatus="Unhealthy")
    (state,) = autoscaling.describe_auto_scaling_instances(InstanceIds=[worker])["AutoScalingInstances"]
    assert state["AutoScalingGroupName"] == "ddlc-prod-workers" and state["HealthStatus"].upper() == "UNHEALTHY"
