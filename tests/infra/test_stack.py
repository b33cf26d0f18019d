"""Every resource and property the issue asks for, asserted on the synthesized templates (dev and prod)."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match

from tests.infra.conftest import resources, synth

# --- network ---------------------------------------------------------------------------------------


def test_vpc_has_private_subnet_in_one_az_with_nat(synthesized):
    template = synthesized.template
    template.resource_count_is("AWS::EC2::VPC", 1)
    template.resource_count_is("AWS::EC2::NatGateway", 1)
    subnets = resources(synthesized.template_json, "AWS::EC2::Subnet")
    zones = {s["Properties"]["AvailabilityZone"] for s in subnets.values()}
    assert zones == {synthesized.stack.settings.availability_zone}
    private = [s for s in subnets.values() if s["Properties"]["MapPublicIpOnLaunch"] is False]
    assert len(private) == 2  # nodes subnet, and the NAT subnet also never maps public IPs


def test_s3_gateway_and_interface_endpoints(synthesized):
    endpoints = resources(synthesized.template_json, "AWS::EC2::VPCEndpoint")
    services = {json.dumps(e["Properties"]["ServiceName"]): e["Properties"].get("VpcEndpointType") for e in endpoints.values()}
    text = " ".join(services)
    for name in ("ssm", "ssmmessages", "ec2messages", "monitoring", "logs"):
        assert f".{name}" in text, f"no interface endpoint for {name}"
    assert any(".s3" in s and kind == "Gateway" for s, kind in services.items())
    interface = [e for e in endpoints.values() if e["Properties"].get("VpcEndpointType") == "Interface"]
    assert interface and all(e["Properties"]["PrivateDnsEnabled"] for e in interface)


def test_flow_logs_to_a_log_group_with_retention(synthesized):
    synthesized.template.has_resource_properties(
        "AWS::EC2::FlowLog", {"ResourceType": "VPC", "TrafficType": "ALL", "LogDestinationType": "cloud-watch-logs"}
    )
    for group in resources(synthesized.template_json, "AWS::Logs::LogGroup").values():
        assert group["Properties"]["RetentionInDays"] == synthesized.stack.settings.log_retention_days


# --- security group ------------------------------------------------------------------------------


def test_efa_security_group_only_admits_itself(synthesized):
    template_json = synthesized.template_json
    groups = resources(template_json, "AWS::EC2::SecurityGroup")
    efa_id = next(k for k in groups if k.startswith("EfaSecurityGroup"))
    assert "SecurityGroupIngress" not in groups[efa_id]["Properties"]
    ingress = resources(template_json, "AWS::EC2::SecurityGroupIngress")
    own_group = {"Fn::GetAtt": [efa_id, "GroupId"]}
    # All traffic from itself (FSx adds its Lustre ports, also from itself only).
    assert all(r["Properties"]["SourceSecurityGroupId"] == own_group for r in ingress.values())
    assert any(r["Properties"]["IpProtocol"] == "-1" for r in ingress.values())
    egress = resources(template_json, "AWS::EC2::SecurityGroupEgress")
    assert any(e["Properties"].get("DestinationSecurityGroupId") == {"Fn::GetAtt": [efa_id, "GroupId"]}
               and e["Properties"]["IpProtocol"] == "-1" for e in egress.values())


def test_no_ingress_from_anywhere_and_no_ssh(synthesized):
    text = json.dumps(synthesized.template_json)
    rules = []
    for group in resources(synthesized.template_json, "AWS::EC2::SecurityGroup").values():
        rules += group["Properties"].get("SecurityGroupIngress", [])
    rules += [r["Properties"] for r in resources(synthesized.template_json, "AWS::EC2::SecurityGroupIngress").values()]
    assert rules
    for rule in rules:
        assert rule.get("CidrIp") != "0.0.0.0/0" and rule.get("CidrIpv6") != "::/0", rule
        ports = range(rule.get("FromPort", 0), rule.get("ToPort", 65535) + 1)
        if rule["IpProtocol"] in ("tcp", "6"):
            assert 22 not in ports or "CidrIp" not in rule, rule
    assert '"FromPort": 22' not in text


# --- placement and capacity --------------------------------------------------------------------


def test_placement_group_cluster_strategy_on_worker_template(synthesized):
    synthesized.template.has_resource_properties("AWS::EC2::PlacementGroup", {"Strategy": "cluster"})
    worker = _launch_template(synthesized, "Worker")
    assert "GroupName" in json.dumps(worker["Placement"])


def test_capacity_reservation_switches_placement_group_off():
    reserved = synth("prod", capacity_reservation_id="cr-0123456789abcdef0")
    reserved.template.resource_count_is("AWS::EC2::PlacementGroup", 0)
    worker = _launch_template(reserved, "Worker")
    assert "Placement" not in worker
    assert worker["CapacityReservationSpecification"] == {
        "CapacityReservationTarget": {"CapacityReservationId": "cr-0123456789abcdef0"}
    }
    assert "InstanceMarketOptions" not in worker


def test_capacity_block_sets_market_type():
    block = synth("prod", capacity_reservation_id="cr-0123456789abcdef0", capacity_block=True)
    worker = _launch_template(block, "Worker")
    assert worker["InstanceMarketOptions"] == {"MarketType": "capacity-block"}
    block.template.resource_count_is("AWS::EC2::PlacementGroup", 0)


# --- launch templates ----------------------------------------------------------------------------


def _launch_template(synthesized, prefix: str) -> dict:
    templates = resources(synthesized.template_json, "AWS::EC2::LaunchTemplate")
    return next(v for k, v in templates.items() if k.startswith(prefix))["Properties"]["LaunchTemplateData"]


@pytest.mark.parametrize(
    ("instance_type", "efa_count"),
    [("p4d.24xlarge", 4), ("p5.48xlarge", 32), ("p5en.48xlarge", 16), ("p3dn.24xlarge", 1),
     ("p3.16xlarge", 0), ("g5.xlarge", 0)],
)
def test_efa_interfaces_per_instance_type(instance_type, efa_count):
    data = _launch_template(synth("prod", instance_type=instance_type), "Worker")
    assert data["InstanceType"] == instance_type
    interfaces = data["NetworkInterfaces"]
    efa = [i for i in interfaces if i.get("InterfaceType") == "efa"]
    assert len(efa) == efa_count
    assert len(interfaces) == max(efa_count, 1)  # no EFA: one plain ENI
    cards = [i["NetworkCardIndex"] for i in interfaces]
    assert cards == list(range(len(interfaces)))
    assert interfaces[0]["DeviceIndex"] == 0
    assert all(i["DeviceIndex"] == 1 for i in interfaces[1:])
    assert all(i["AssociatePublicIpAddress"] is False and len(i["Groups"]) == 1 for i in interfaces)
    assert "SecurityGroupIds" not in data  # not allowed alongside NetworkInterfaces


def test_launch_templates_require_imdsv2_and_encrypted_gp3_root(synthesized):
    for prefix in ("Head", "Worker"):
        data = _launch_template(synthesized, prefix)
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        (root,) = data["BlockDeviceMappings"]
        assert root["Ebs"]["Encrypted"] is True and root["Ebs"]["VolumeType"] == "gp3"
        assert data["Monitoring"] == {"Enabled": True}
        assert data["NetworkInterfaces"][0]["AssociatePublicIpAddress"] is False


def test_ami_resolved_from_public_ssm_parameter(synthesized):
    parameters = synthesized.template_json["Parameters"]
    ami = [p for p in parameters.values() if p["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"]
    assert [p["Default"] for p in ami] == [synthesized.stack.settings.ami_ssm_parameter]
    assert synthesized.stack.settings.ami_ssm_parameter.startswith("/aws/service/deeplearning/ami/")


def test_pinned_ami_replaces_the_ssm_lookup():
    pinned = synth("prod", ami_id="ami-0123456789abcdef0")
    assert _launch_template(pinned, "Worker")["ImageId"] == "ami-0123456789abcdef0"


def test_user_data_installs_ddlc_and_starts_agents(synthesized):
    text = json.dumps(_launch_template(synthesized, "Worker")["UserData"])
    assert "/opt/conda/envs/pytorch/bin/python" in text and "pip install" in text
    assert "ddlc agent --host 0.0.0.0 --port 9400" in text
    assert "ddlc cluster hosts" in text and "/etc/ddlc/hostfile" in text
    assert "nvidia_gpu" in text and "amazon-cloudwatch-agent-ctl" in text
    head_text = json.dumps(_launch_template(synthesized, "Head")["UserData"])
    assert "nvidia_gpu" not in head_text and "ddlc agent --host 0.0.0.0 --port 9400" in head_text


# --- nodes -----------------------------------------------------------------------------------------


def _tags(resource: dict) -> dict:
    return {t["Key"]: t["Value"] for t in resource["Properties"].get("Tags", [])}


def test_head_and_worker_nodes_tagged(synthesized):
    settings = synthesized.stack.settings
    instances = resources(synthesized.template_json, "AWS::EC2::Instance")
    roles = [_tags(i)["role"] for i in instances.values()]
    assert roles.count("head") == 1 and roles.count("worker") == settings.node_count
    for instance in instances.values():
        tags = _tags(instance)
        assert tags["project"] == "ddlc" and tags["environment"] == settings.name
        assert tags["ddlc:cluster"] == f"ddlc-{settings.name}"
        assert "NetworkInterfaces" not in instance["Properties"]  # all from the launch template, no public IP
    indexes = sorted(int(_tags(i)["ddlc:node-index"]) for i in instances.values() if _tags(i)["role"] == "worker")
    assert indexes == list(range(settings.node_count))


def test_prod_is_four_p4d_nodes_with_eight_gpus():
    prod = synth("prod")
    assert prod.stack.settings.node_count == 4
    assert prod.stack.settings.gpu_type.gpus == 8
    assert _launch_template(prod, "Worker")["InstanceType"] == "p4d.24xlarge"


# --- IAM ------------------------------------------------------------------------------------------


def test_node_role_has_ssm_cloudwatch_and_bucket_only(synthesized):
    roles = resources(synthesized.template_json, "AWS::IAM::Role")
    node_role = next(v for k, v in roles.items() if k.startswith("NodeRole"))
    managed = json.dumps(node_role["Properties"]["ManagedPolicyArns"])
    assert "AmazonSSMManagedInstanceCore" in managed and "CloudWatchAgentServerPolicy" in managed
    policies = [p for k, p in resources(synthesized.template_json, "AWS::IAM::Policy").items() if k.startswith("NodeRole")]
    (policy,) = policies
    bucket = next(k for k in resources(synthesized.template_json, "AWS::S3::Bucket") if k.startswith("CheckpointsBucket"))
    for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
        if statement["Resource"] == "*":
            assert statement["Action"] == "ec2:DescribeInstances"
        else:
            assert bucket in json.dumps(statement["Resource"])
            assert all(a.startswith("s3:") for a in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]))


# --- checkpoint bucket -----------------------------------------------------------------------------


def _checkpoint_bucket(synthesized) -> tuple[str, dict]:
    buckets = resources(synthesized.template_json, "AWS::S3::Bucket")
    return next((k, v) for k, v in buckets.items() if k.startswith("CheckpointsBucket"))


def test_checkpoint_bucket_encrypted_private_versioned_logged(synthesized):
    _, bucket = _checkpoint_bucket(synthesized)
    props = bucket["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
    }
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert "DestinationBucketName" in props["LoggingConfiguration"]
    rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
    assert "NoncurrentVersionExpiration" in rules["expire-old-checkpoint-versions"]
    assert rules["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] > 0


def test_bucket_policy_denies_non_ssl(synthesized):
    bucket_id, _ = _checkpoint_bucket(synthesized)
    policies = resources(synthesized.template_json, "AWS::S3::BucketPolicy")
    policy = next(p for p in policies.values() if p["Properties"]["Bucket"] == {"Ref": bucket_id})
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Action"] == "s3:*" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in statements
    )


def test_bucket_retained_in_prod_destroyed_in_dev():
    _, prod_bucket = _checkpoint_bucket(synth("prod"))
    assert prod_bucket["DeletionPolicy"] == "Retain"
    synth("prod").template.resource_count_is("Custom::S3AutoDeleteObjects", 0)
    _, dev_bucket = _checkpoint_bucket(synth("dev"))
    assert dev_bucket["DeletionPolicy"] == "Delete"
    synth("dev").template.resource_count_is("Custom::S3AutoDeleteObjects", 2)


# --- FSx for Lustre (optional) ---------------------------------------------------------------------


def test_lustre_only_when_configured_and_linked_to_bucket():
    synth("dev").template.resource_count_is("AWS::FSx::FileSystem", 0)
    prod = synth("prod")
    bucket_id, _ = _checkpoint_bucket(prod)
    prod.template.has_resource_properties("AWS::FSx::FileSystem", {
        "FileSystemType": "LUSTRE",
        "LustreConfiguration": {
            "ImportPath": {"Fn::Join": ["", ["s3://", {"Ref": bucket_id}]]},
            "ExportPath": {"Fn::Join": ["", ["s3://", {"Ref": bucket_id}]]},
            "AutoImportPolicy": "NEW_CHANGED_DELETED",
        },
    })
    assert "mount.lustre" in json.dumps(_launch_template(prod, "Worker")["UserData"])


# --- CloudWatch, alerts, budget, maintenance, outputs ---------------------------------------------


def _alarms(synthesized) -> dict[str, dict]:
    return {k: v["Properties"] for k, v in resources(synthesized.template_json, "AWS::CloudWatch::Alarm").items()}


def test_gpu_utilization_alarm_below_80_for_30_minutes(synthesized):
    alarm = next(a for k, a in _alarms(synthesized).items() if k.startswith("AlarmsGpuUnderutilized"))
    assert alarm["MetricName"] == "nvidia_smi_utilization_gpu" and alarm["Namespace"] == "CWAgent"
    assert alarm["Threshold"] == 80 and alarm["ComparisonOperator"] == "LessThanThreshold"
    assert alarm["Period"] * alarm["EvaluationPeriods"] == 30 * 60
    assert alarm["Dimensions"] == [{"Name": "ClusterName", "Value": f"ddlc-{synthesized.stack.settings.name}"}]


def test_gpu_memory_alarm_above_95_percent(synthesized):
    alarm = next(a for k, a in _alarms(synthesized).items() if k.startswith("AlarmsGpuMemoryHigh"))
    assert alarm["Threshold"] == 95 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    expression = next(m for m in alarm["Metrics"] if "Expression" in m)
    assert expression["Expression"] == "100 * used / total"


def test_checkpoint_alarm_uses_rpo_and_treats_missing_as_breaching(synthesized):
    alarm = next(a for k, a in _alarms(synthesized).items() if k.startswith("AlarmsCheckpointStale"))
    assert alarm["TreatMissingData"] == "breaching"
    metric = next(m for m in alarm["Metrics"] if "MetricStat" in m)["MetricStat"]
    assert metric["Metric"]["MetricName"] == "ddlc_checkpoint_last_success_timestamp_seconds"
    assert metric["Metric"]["Namespace"] == "DDLC"
    assert metric["Period"] == synthesized.stack.settings.recovery_point_objective_minutes * 60


def test_status_check_alarm_per_instance_and_all_alarms_notify(synthesized):
    alarms = _alarms(synthesized)
    status = [a for a in alarms.values() if a.get("MetricName") == "StatusCheckFailed"]
    assert len(status) == synthesized.stack.settings.node_count + 1
    topic = next(k for k in resources(synthesized.template_json, "AWS::SNS::Topic"))
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [{"Ref": topic}]


def test_alert_topic_encrypted_ssl_only_with_email(synthesized):
    synthesized.template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    synthesized.template.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": synthesized.stack.settings.alert_email}
    )
    synthesized.template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    policy = json.dumps(resources(synthesized.template_json, "AWS::SNS::TopicPolicy"))
    assert "aws:SecureTransport" in policy and "budgets.amazonaws.com" in policy


def test_budget_actual_and_forecast(synthesized):
    (budget,) = resources(synthesized.template_json, "AWS::Budgets::Budget").values()
    props = budget["Properties"]
    assert props["Budget"]["BudgetLimit"] == {"Amount": synthesized.stack.settings.budget_usd, "Unit": "USD"}
    kinds = {n["Notification"]["NotificationType"] for n in props["NotificationsWithSubscribers"]}
    assert kinds == {"ACTUAL", "FORECASTED"}


def test_patch_baseline_and_monthly_window_for_head_node(synthesized):
    synthesized.template.has_resource_properties("AWS::SSM::PatchBaseline", {"OperatingSystem": "UBUNTU"})
    synthesized.template.has_resource_properties("AWS::SSM::MaintenanceWindow", {"Schedule": Match.string_like_regexp(r"SUN#1")})
    head = next(k for k, v in resources(synthesized.template_json, "AWS::EC2::Instance").items() if k.startswith("NodesHead"))
    synthesized.template.has_resource_properties(
        "AWS::SSM::MaintenanceWindowTarget", {"Targets": [{"Key": "InstanceIds", "Values": [{"Ref": head}]}]}
    )
    synthesized.template.has_resource_properties("AWS::SSM::MaintenanceWindowTask", {"TaskArn": "AWS-RunPatchBaseline"})


def test_outputs(synthesized):
    outputs = synthesized.template_json["Outputs"]
    head = next(k for k in resources(synthesized.template_json, "AWS::EC2::Instance") if k.startswith("NodesHead"))
    assert outputs["HeadNodeId"]["Value"] == {"Ref": head}
    assert outputs["ConnectCommand"]["Value"] == {
        "Fn::Join": ["", ["aws ssm start-session --target ", {"Ref": head},
                          f" --region {synthesized.stack.settings.region}"]]
    }
    assert set(outputs) >= {"CheckpointBucketName", "AlertTopicArn", "ClusterName"}


def test_dashboard_hook_builds_given_definitions():
    from aws_cdk import aws_cloudwatch as cloudwatch

    class Overview:
        name = "overview"

        def widgets(self, metrics):
            return [[cloudwatch.GraphWidget(title="GPU utilization", left=[metrics.gpu_utilization])]]

    synth("dev").template.resource_count_is("AWS::CloudWatch::Dashboard", 0)
    with_dashboard = synth("dev", dashboards=(Overview(),))
    with_dashboard.template.has_resource_properties("AWS::CloudWatch::Dashboard", {"DashboardName": "ddlc-dev-overview"})
