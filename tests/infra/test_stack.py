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


def _worker_group(synthesized) -> dict:
    (group,) = resources(synthesized.template_json, "AWS::AutoScaling::AutoScalingGroup").values()
    return group


def test_workers_in_the_cluster_placement_group(synthesized):
    synthesized.template.has_resource_properties("AWS::EC2::PlacementGroup", {"Strategy": "cluster"})
    (group_id,) = resources(synthesized.template_json, "AWS::EC2::PlacementGroup")
    assert _worker_group(synthesized)["Properties"]["PlacementGroup"] == {"Fn::GetAtt": [group_id, "GroupName"]}
    assert "Placement" not in _launch_template(synthesized, "Worker")
    assert synthesized.template_json["Outputs"]["WorkerPlacement"]["Value"] == "cluster placement group of this stack"


def test_odcr_without_placement_group_says_so():
    reserved = synth("prod", capacity_reservation_id="cr-0123456789abcdef0")
    reserved.template.resource_count_is("AWS::EC2::PlacementGroup", 0)
    worker = _launch_template(reserved, "Worker")
    assert "Placement" not in worker and "PlacementGroup" not in _worker_group(reserved)["Properties"]
    assert worker["CapacityReservationSpecification"] == {
        "CapacityReservationTarget": {"CapacityReservationId": "cr-0123456789abcdef0"}
    }
    assert "InstanceMarketOptions" not in worker
    assert "no placement group" in reserved.template_json["Outputs"]["WorkerPlacement"]["Value"]


def test_odcr_in_a_cluster_placement_group_launches_into_that_group():
    reserved = synth("prod", capacity_reservation_id="cr-0123456789abcdef0", placement_group_name="odcr-pg")
    reserved.template.resource_count_is("AWS::EC2::PlacementGroup", 0)  # the reservation's group, not a new one
    assert _worker_group(reserved)["Properties"]["PlacementGroup"] == "odcr-pg"
    assert _launch_template(reserved, "Worker")["CapacityReservationSpecification"] == {
        "CapacityReservationTarget": {"CapacityReservationId": "cr-0123456789abcdef0"}
    }
    assert "odcr-pg" in reserved.template_json["Outputs"]["WorkerPlacement"]["Value"]


def test_capacity_block_sets_market_type():
    block = synth("prod", capacity_reservation_id="cr-0123456789abcdef0", capacity_block=True)
    worker = _launch_template(block, "Worker")
    assert worker["InstanceMarketOptions"] == {"MarketType": "capacity-block"}
    block.template.resource_count_is("AWS::EC2::PlacementGroup", 0)
    assert "PlacementGroup" not in _worker_group(block)["Properties"]


@pytest.mark.parametrize("bad", [
    {"placement_group_name": "pg"},  # no reservation
    {"placement_group_name": "pg", "capacity_reservation_id": "cr-0123456789abcdef0", "capacity_block": True},
])
def test_placement_group_name_only_with_an_odcr(bad):
    from ddlc.errors import UserError
    from ddlc.infra.settings import load_environment
    from tests.infra.conftest import cdk_context

    environments = cdk_context()["environments"]
    environments["prod"].update(bad)
    with pytest.raises(UserError, match=r"^environments\.prod: placement_group_name is for an On-Demand"):
        load_environment(environments, "prod")


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
    efa = [i for i in interfaces if i.get("InterfaceType") in ("efa", "efa-only")]
    assert len(efa) == efa_count
    assert len(interfaces) == max(efa_count, 1)  # no EFA: one plain ENI
    cards = [i["NetworkCardIndex"] for i in interfaces]
    assert cards == list(range(len(interfaces)))
    assert interfaces[0]["DeviceIndex"] == 0
    assert all(i["DeviceIndex"] == 1 for i in interfaces[1:])
    # EC2 rejects AssociatePublicIpAddress on multi-interface launches; the subnet maps no public IPs anyway.
    assert all("AssociatePublicIpAddress" not in i and len(i["Groups"]) == 1 for i in interfaces)
    assert "SecurityGroupIds" not in data  # not allowed alongside NetworkInterfaces
    if efa_count:
        assert interfaces[0]["InterfaceType"] == "efa"  # card 0: EFA with ENA (the IP address)
        secondary = {i["InterfaceType"] for i in interfaces[1:]}
        assert secondary <= ({"efa-only"} if instance_type.startswith("p5") else {"efa"})


def test_launch_templates_require_imdsv2_and_encrypted_gp3_root(synthesized):
    for prefix in ("Head", "Worker"):
        data = _launch_template(synthesized, prefix)
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        (root,) = data["BlockDeviceMappings"]
        assert root["Ebs"]["Encrypted"] is True and root["Ebs"]["VolumeType"] == "gp3"
        assert data["Monitoring"] == {"Enabled": True}
        assert all("AssociatePublicIpAddress" not in i for i in data["NetworkInterfaces"])


def test_ami_resolved_from_public_ssm_parameter(synthesized):
    parameters = synthesized.template_json["Parameters"]
    ami = [p for p in parameters.values() if p["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"]
    assert [p["Default"] for p in ami] == [synthesized.stack.settings.ami_ssm_parameter]
    assert synthesized.stack.settings.ami_ssm_parameter.startswith("/aws/service/deeplearning/ami/")


def test_pinned_ami_replaces_the_ssm_lookup():
    from aws_cdk.assertions import Annotations

    pinned = synth("prod", ami_id="ami-0123456789abcdef0")
    assert _launch_template(pinned, "Worker")["ImageId"] == "ami-0123456789abcdef0"
    assert not Annotations.from_stack(pinned.stack).find_warning("*", Match.string_like_regexp("ami_id is not set"))
    # Unpinned in an environment that keeps its data: the synth says the AMI will follow AWS's latest.
    unpinned = Annotations.from_stack(synth("prod").stack)
    unpinned.has_warning("*", Match.string_like_regexp("environments.prod.ami_id is not set"))


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


def test_head_is_one_instance_and_tagged(synthesized):
    settings = synthesized.stack.settings
    (head,) = resources(synthesized.template_json, "AWS::EC2::Instance").values()
    tags = _tags(head)
    assert tags["role"] == "head" and tags["project"] == "ddlc" and tags["environment"] == settings.name
    assert tags["ddlc:cluster"] == f"ddlc-{settings.name}"
    assert "NetworkInterfaces" not in head["Properties"]  # all from the launch template, no public IP


def test_workers_are_a_fixed_size_auto_scaling_group(synthesized):
    settings = synthesized.stack.settings
    props = _worker_group(synthesized)["Properties"]
    count = str(settings.node_count)
    assert (props["MinSize"], props["MaxSize"], props["DesiredCapacity"]) == (count, count, count)
    assert props["AutoScalingGroupName"] == f"ddlc-{settings.name}-workers"
    template_id = next(k for k in resources(synthesized.template_json, "AWS::EC2::LaunchTemplate") if k.startswith("Worker"))
    assert props["LaunchTemplate"] == {"LaunchTemplateId": {"Ref": template_id},
                                       "Version": {"Fn::GetAtt": [template_id, "LatestVersionNumber"]}}
    subnets = [k for k, v in resources(synthesized.template_json, "AWS::EC2::Subnet").items() if "nodes" in k.lower()]
    assert props["VPCZoneIdentifier"] == [{"Ref": subnets[0]}]
    assert props["HealthCheckType"] == "EC2"
    # Replacements and instance refreshes terminate before launching: nothing beyond node_count is needed.
    assert props["InstanceMaintenancePolicy"] == {"MinHealthyPercentage": 0, "MaxHealthyPercentage": 100}
    # A deploy never replaces workers by itself (no rolling update policy): the refresh does, on purpose.
    assert "UpdatePolicy" not in _worker_group(synthesized)
    topic = next(iter(resources(synthesized.template_json, "AWS::SNS::Topic")))
    (notify,) = props["NotificationConfigurations"]
    assert notify["TopicARN"] == {"Ref": topic} and "autoscaling:EC2_INSTANCE_LAUNCH_ERROR" in notify["NotificationTypes"]
    tags = {t["Key"]: (t["Value"], t["PropagateAtLaunch"]) for t in props["Tags"]}
    for key, value in (("role", "worker"), ("ddlc:cluster", f"ddlc-{settings.name}"), ("project", "ddlc"),
                       ("environment", settings.name)):
        assert tags[key] == (value, True), key  # discovery finds replacements by these
    assert synthesized.template_json["Outputs"]["WorkerGroupName"]["Value"] == {"Ref": next(
        iter(resources(synthesized.template_json, "AWS::AutoScaling::AutoScalingGroup")))}


def test_prod_is_four_p4d_nodes_with_eight_gpus():
    prod = synth("prod")
    assert prod.stack.settings.node_count == 4
    assert prod.stack.settings.gpu_type.gpus == 8
    assert _launch_template(prod, "Worker")["InstanceType"] == "p4d.24xlarge"


# --- IAM ------------------------------------------------------------------------------------------


def _node_statements(synthesized) -> list[dict]:
    policies = [p for k, p in resources(synthesized.template_json, "AWS::IAM::Policy").items() if k.startswith("NodeRole")]
    (policy,) = policies
    return policy["Properties"]["PolicyDocument"]["Statement"]


def _actions(statement: dict) -> list[str]:
    return [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]


def test_node_role_has_ssm_cloudwatch_bucket_and_its_own_resources_only(synthesized):
    roles = resources(synthesized.template_json, "AWS::IAM::Role")
    node_role = next(v for k, v in roles.items() if k.startswith("NodeRole"))
    managed = json.dumps(node_role["Properties"]["ManagedPolicyArns"])
    assert "AmazonSSMManagedInstanceCore" in managed and "CloudWatchAgentServerPolicy" in managed
    bucket = next(k for k in resources(synthesized.template_json, "AWS::S3::Bucket") if k.startswith("CheckpointsBucket"))
    secrets = list(resources(synthesized.template_json, "AWS::SecretsManager::Secret"))  # ssh (+ munge: Slurm)
    (parameter,) = resources(synthesized.template_json, "AWS::SSM::Parameter")
    (topic,) = resources(synthesized.template_json, "AWS::SNS::Topic")
    (key,) = [k for k in resources(synthesized.template_json, "AWS::KMS::Key") if k.startswith("AlertsKey")]
    for statement in _node_statements(synthesized):
        actions, where = _actions(statement), json.dumps(statement["Resource"])
        if statement["Resource"] == "*":
            assert actions == ["ec2:DescribeInstances"]
        elif actions == ["autoscaling:SetInstanceHealth"]:
            assert where.endswith(f':autoScalingGroupName/ddlc-{synthesized.stack.settings.name}-workers"]]}}')
        elif any(a.startswith("secretsmanager:") for a in actions):
            assert any(secret in where for secret in secrets)
        elif actions == ["ssm:GetParameter"]:
            assert parameter in where
        elif actions == ["sns:Publish"]:  # the head's Alertmanager: the alert topic only
            assert statement["Resource"] == {"Ref": topic}
        elif any(a.startswith("kms:") for a in actions):  # ... and that topic's key, to encrypt with
            assert sorted(actions) == ["kms:Decrypt", "kms:GenerateDataKey"]
            assert statement["Resource"] == {"Fn::GetAtt": [key, "Arn"]}
        elif bucket not in where:  # the package asset: one object of the CDK assets bucket
            assert actions == ["s3:GetObject"] and "cdk-" in where and ".zip" in where
        else:
            assert all(a.startswith("s3:") for a in actions)


def test_nodes_cannot_delete_checkpoint_versions_for_good(synthesized):
    from fnmatch import fnmatchcase

    granted = [a for s in _node_statements(synthesized) if s["Effect"] == "Allow" for a in _actions(s)]
    assert "s3:DeleteObject" in granted
    for forbidden in ("s3:DeleteObjectVersion", "s3:DeleteObjectVersionTagging", "s3:PutLifecycleConfiguration",
                      "s3:PutBucketVersioning"):
        assert not any(fnmatchcase(forbidden, pattern) for pattern in granted), forbidden


def test_worker_may_mark_only_its_own_group_unhealthy(synthesized):
    (statement,) = [s for s in _node_statements(synthesized) if "autoscaling:SetInstanceHealth" in _actions(s)]
    assert _actions(statement) == ["autoscaling:SetInstanceHealth"]
    resource = json.dumps(statement["Resource"])
    assert "autoScalingGroupName/ddlc-" in resource and '*"' not in resource.split("autoScalingGroupName/")[1]
    assert not any(a.startswith("autoscaling:") for s in _node_statements(synthesized) if s is not statement
                   for a in _actions(s))


def test_cluster_ssh_secret_is_generated_and_readable_by_the_node_role_only(synthesized):
    (secret_id, secret), = [(k, v) for k, v in resources(synthesized.template_json, "AWS::SecretsManager::Secret").items()
                            if k.startswith("SshSecret")]
    generate = secret["Properties"]["GenerateSecretString"]
    assert generate["PasswordLength"] >= 64 and "SecretString" not in secret["Properties"]
    (policy,) = [p for k, p in resources(synthesized.template_json, "AWS::SecretsManager::ResourcePolicy").items()
                 if k.startswith("SshSecret")]
    role = next(k for k in resources(synthesized.template_json, "AWS::IAM::Role") if k.startswith("NodeRole"))
    (deny,) = [s for s in policy["Properties"]["ResourcePolicy"]["Statement"] if s["Effect"] == "Deny"]
    assert deny["Principal"] == {"AWS": "*"} and deny["Action"] == "secretsmanager:GetSecretValue"
    assert deny["Condition"] == {"StringNotEquals": {"aws:PrincipalArn": {"Fn::GetAtt": [role, "Arn"]}}}
    worker_data = json.dumps(_launch_template(synthesized, "Worker")["UserData"])
    assert secret_id in worker_data and "ddlc.infra.ssh_key install" in worker_data


def test_package_asset_location_is_a_parameter_not_user_data(synthesized):
    (parameter,) = resources(synthesized.template_json, "AWS::SSM::Parameter").values()
    props = parameter["Properties"]
    assert props["Name"] == f"/ddlc/{synthesized.stack.settings.name}/node-package"
    value = json.dumps(props["Value"])
    assert "s3://" in value and ".zip" in value and "cdk-" in value
    worker_data = json.dumps(_launch_template(synthesized, "Worker")["UserData"])
    assert props["Name"] in worker_data and ".zip\\\"" not in worker_data and "cdk-hnb659fds-assets" not in worker_data


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


def test_no_alarm_on_gpu_memory_use_but_on_out_of_memory_events(synthesized):
    alarms = _alarms(synthesized)
    assert not any("memory_used" in json.dumps(a) for a in alarms.values())
    names = {a.get("MetricName") for a in alarms.values()}
    assert {"host_oom_kills", "cuda_oom_errors", "gpu_xid_errors", "efa_errors"} <= names


def test_no_alarm_treats_missing_data_as_breaching(synthesized):
    # Stopped nodes, an idle cluster and quiet logs publish nothing; none of that may page anyone.
    for name, alarm in _alarms(synthesized).items():
        assert alarm["TreatMissingData"] in ("notBreaching", "missing"), name


def test_checkpoint_alarm_uses_rpo_window(synthesized):
    alarm = next(a for k, a in _alarms(synthesized).items() if k.startswith("AlarmsCheckpointStale"))
    assert alarm["TreatMissingData"] == "notBreaching"
    metric = next(m for m in alarm["Metrics"] if "MetricStat" in m)["MetricStat"]
    assert metric["Metric"]["MetricName"] == "ddlc_checkpoint_last_success_timestamp_seconds"
    assert metric["Metric"]["Namespace"] == "DDLC"
    assert metric["Period"] == synthesized.stack.settings.recovery_point_objective_minutes * 60


def test_status_check_alarms_for_head_and_worker_group_and_all_alarms_notify(synthesized):
    alarms = _alarms(synthesized)
    status = [a for a in alarms.values() if a.get("MetricName") == "StatusCheckFailed"]
    dimensions = sorted(a["Dimensions"][0]["Name"] for a in status)
    assert dimensions == ["AutoScalingGroupName", "InstanceId"]
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
