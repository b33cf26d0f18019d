"""Slurm on the cluster (scheduler=slurm, the default), asserted on the synthesized templates: slurmctld on the
head, slurmd on the workers, the munge key secret readable by the node role only, Slurm's ports open only
inside the cluster security group; and none of it with scheduler=none."""

from __future__ import annotations

import copy
import json

from aws_cdk.assertions import Match

from ddlc.scheduler.cluster_spec import SRUN_PORT_RANGE
from ddlc.scheduler.slurm_conf import HEALTH_CHECK_PROGRAM
from tests.infra.conftest import resources, synth


def _user_data(synthesized, prefix: str) -> str:
    """The launch template's user data as text, CloudFormation references shown as {"Ref": ...} JSON."""
    templates = resources(synthesized.template_json, "AWS::EC2::LaunchTemplate")
    data = next(v for k, v in templates.items() if k.startswith(prefix))["Properties"]["LaunchTemplateData"]
    parts = data["UserData"]["Fn::Base64"]["Fn::Join"][1]
    return "".join(part if isinstance(part, str) else json.dumps(part, sort_keys=True) for part in parts)


def _munge_secret(synthesized) -> str:
    (secret_id,) = [k for k in resources(synthesized.template_json, "AWS::SecretsManager::Secret")
                    if k.startswith("MungeSecret")]
    return secret_id


def _node_role(synthesized) -> str:
    return next(k for k in resources(synthesized.template_json, "AWS::IAM::Role") if k.startswith("NodeRole"))


def test_head_runs_slurmctld_and_workers_run_slurmd(synthesized):
    head, worker = _user_data(synthesized, "Head"), _user_data(synthesized, "Worker")
    assert '"${APT[@]}" install munge slurm-client slurmctld ||' in head
    assert '"${APT[@]}" install munge slurm-client slurmd ||' in worker
    assert "slurmd" not in head and "slurmctld" not in worker
    # The queue and node metrics come from the head's agent only (cluster-wide numbers).
    assert "--slurm-metrics" in head and "--slurm-metrics" not in worker
    for text, role in ((head, "head"), (worker, "worker")):
        # slurm.conf from discovery, at boot (loud on failure) and from the hostfile timer afterwards.
        assert "exec /usr/local/bin/ddlc cluster slurm-conf --cluster \"$DDLC_CLUSTER\"" in text, role
        assert "    /usr/local/sbin/ddlc-slurm-conf || exit 1" in text, role
        assert "ddlc_fail 'Slurm: slurm.conf was not written" in text, role
        assert f"cat > {HEALTH_CHECK_PROGRAM} <<'SCRIPT'" in text and "exec /usr/local/bin/ddlc health --slurm-drain" in text


def test_munge_key_step_reads_the_munge_secret_into_a_munge_only_file(synthesized):
    secret = json.dumps({"Ref": _munge_secret(synthesized)}, sort_keys=True)
    for prefix in ("Head", "Worker"):
        text = _user_data(synthesized, prefix)
        assert f"aws secretsmanager get-secret-value --region {synthesized.stack.settings.region} --secret-id '{secret}' " in text
        step = text[text.index("MUNGE_KEY_TMP=$(mktemp"):text.index("systemctl restart munge")]
        assert step.index('chown munge:munge "$MUNGE_KEY_TMP"') < step.index('mv -f "$MUNGE_KEY_TMP" /etc/munge/munge.key')
        assert 'chmod 0400 "$MUNGE_KEY_TMP"' in step
        assert '"${MUNGE_KEY_TMP:-}"' in text[text.index("ddlc_fail() {"):text.index("exit 1\n}")]


def test_munge_secret_is_generated_and_readable_by_the_node_role_only(synthesized):
    template, secret, role = synthesized.template, _munge_secret(synthesized), _node_role(synthesized)
    template.has_resource_properties("AWS::SecretsManager::Secret", {
        "GenerateSecretString": {"PasswordLength": 128, "ExcludePunctuation": True},
        "SecretString": Match.absent(),
    })
    # Every other principal is denied by the secret itself ...
    template.has_resource_properties("AWS::SecretsManager::ResourcePolicy", {
        "SecretId": {"Ref": secret},
        "ResourcePolicy": {"Statement": Match.array_with([{
            "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "secretsmanager:GetSecretValue", "Resource": "*",
            "Condition": {"StringNotEquals": {"aws:PrincipalArn": {"Fn::GetAtt": [role, "Arn"]}}},
        }])},
    })
    # ... and the node role's policy is the only IAM policy that grants reading it.
    readers = [key for key, policy in resources(synthesized.template_json, "AWS::IAM::Policy").items()
               for statement in policy["Properties"]["PolicyDocument"]["Statement"]
               if secret in json.dumps(statement["Resource"]) and statement["Effect"] == "Allow"]
    assert readers and all(key.startswith("NodeRole") for key in readers), readers
    (policy,) = [p for k, p in resources(synthesized.template_json, "AWS::IAM::Policy").items() if k in readers]
    assert policy["Properties"]["Roles"] == [{"Ref": role}]
    granted = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if secret in json.dumps(s["Resource"])]
    assert all(set(s["Action"]) <= {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"} for s in granted)


def test_slurm_ports_open_only_inside_the_cluster_security_group(synthesized):
    groups = resources(synthesized.template_json, "AWS::EC2::SecurityGroup")
    own = {"Fn::GetAtt": [next(k for k in groups if k.startswith("EfaSecurityGroup")), "GroupId"]}
    for low, high in ((6817, 6817), (6818, 6818), SRUN_PORT_RANGE):
        synthesized.template.has_resource_properties("AWS::EC2::SecurityGroupIngress", {
            "IpProtocol": "tcp", "FromPort": low, "ToPort": high, "SourceSecurityGroupId": own,
            "Description": Match.string_like_regexp("Slurm"),
        })
    slurm_rules = [r["Properties"] for r in resources(synthesized.template_json, "AWS::EC2::SecurityGroupIngress").values()
                   if "Slurm" in r["Properties"].get("Description", "")]
    assert len(slurm_rules) == 3 and all(set(r) == {"IpProtocol", "FromPort", "ToPort", "SourceSecurityGroupId",
                                                    "GroupId", "Description"} for r in slurm_rules)


def test_scheduler_none_renders_no_slurm():
    plain = synth("dev", scheduler="none")
    assert not [k for k in resources(plain.template_json, "AWS::SecretsManager::Secret") if k.startswith("Munge")]
    rules = resources(plain.template_json, "AWS::EC2::SecurityGroupIngress").values()
    assert not [r for r in rules if "Slurm" in r["Properties"].get("Description", "")]
    for prefix in ("Head", "Worker"):
        text = _user_data(plain, prefix)
        assert "slurm" not in text.lower() and "munge" not in text.lower()
        assert "ddlc cluster hosts" in text  # the rest of the boot is unchanged


def test_scheduler_context_overrides_the_environment(tmp_path):
    import pytest

    from ddlc.errors import UserError
    from ddlc.infra.app import build_app
    from tests.infra.conftest import cdk_context

    context = copy.deepcopy(cdk_context())
    context.update(environment="prod", scheduler="none")
    _, stack = build_app(context, outdir=str(tmp_path), dashboards=())
    assert stack.settings.scheduler == "none" and stack.munge is None
    assert {boot.scheduler for boot in stack.boot_configs.values()} == {"none"}
    context["scheduler"] = "pbs"
    with pytest.raises(UserError, match=r"^context 'scheduler': 'pbs' is not one of slurm, none$"):
        build_app(context, outdir=str(tmp_path / "bad"), dashboards=())


def test_every_node_knows_the_workers_instance_type_so_jobs_are_priced(synthesized, tmp_path, monkeypatch):
    """`ddlc submit` runs on the head node, whose own type is not the workers': without the workers' type in its
    cluster.env, `ddlc jobs` showed no cost for any job submitted on the cluster."""
    from ddlc.cli.scheduler import cluster_worker_type
    from ddlc.ops import cluster_env

    templates = resources(synthesized.template_json, "AWS::EC2::LaunchTemplate")
    worker_type = next(v for k, v in templates.items() if k.startswith("Worker"))["Properties"][
        "LaunchTemplateData"]["InstanceType"]
    for prefix in ("Head", "Worker"):
        assert f"DDLC_WORKER_INSTANCE_TYPE={worker_type}" in _user_data(synthesized, prefix), prefix
    env_file = tmp_path / "cluster.env"
    env_file.write_text("DDLC_ROLE=head\nDDLC_WORKER_INSTANCE_TYPE=p4d.24xlarge\n")
    monkeypatch.setattr(cluster_env, "CLUSTER_ENV_FILE", env_file)
    monkeypatch.delenv("DDLC_INSTANCE_TYPE", raising=False)
    monkeypatch.delenv("DDLC_WORKER_INSTANCE_TYPE", raising=False)
    assert cluster_worker_type() == "p4d.24xlarge"
