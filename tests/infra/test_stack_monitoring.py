"""The stack runs its monitoring, asserted on the synthesized templates (dev and prod, cdk-nag on): the head
node's boot installs and starts Prometheus and Alertmanager (workers' boots do not), Alertmanager may publish
to the alert topic and nothing else, no monitoring port is opened, Grafana only with `--context grafana=head`."""

from __future__ import annotations

import copy
import json

import pytest

from ddlc.infra.monitoring_boot import GRAFANA_VERSION
from ddlc.infra.user_data import render_user_data
from tests.infra.conftest import resources
from tests.infra.test_stack_slurm import _node_role, _user_data


def _ref(template_json: dict, prefix: str, resource_type: str) -> str:
    (logical_id,) = [k for k in resources(template_json, resource_type) if k.startswith(prefix)]
    return logical_id


def test_head_installs_and_starts_prometheus_and_alertmanager_alerting_to_the_topic(synthesized):
    head, worker = _user_data(synthesized, "Head"), _user_data(synthesized, "Worker")
    topic = _ref(synthesized.template_json, "AlertsTopic", "AWS::SNS::Topic")
    assert "install prometheus prometheus-alertmanager || ddlc_fail" in head
    retention = synthesized.stack.settings.root_volume_gib // 4
    assert (f"ddlc monitor head-setup --sns-topic-arn '{json.dumps({'Ref': topic})}' --region us-east-1 "
            f"--retention-size {retention}GB ||") in head
    # After ddlc is installed and the hostfile timer exists; the boot restarts them (a rerun takes new configs).
    assert head.index("/usr/local/bin/ddlc --help") < head.index("ddlc monitor head-setup")
    assert "systemctl enable ddlc-prometheus.service ddlc-alertmanager.service\n" in head
    assert "systemctl restart ddlc-prometheus.service ddlc-alertmanager.service\n" in head
    assert 'ddlc monitor targets --hostfile "$DDLC_HOSTFILE" || exit 1' in head  # the hostfile timer's hook
    assert "grafana" not in head.lower()  # grafana: none is the default
    for text in ("prometheus-alertmanager", "head-setup", "ddlc monitor targets"):
        assert text not in worker


def test_node_role_may_publish_to_the_alert_topic_only(synthesized):
    template_json = synthesized.template_json
    topic = _ref(template_json, "AlertsTopic", "AWS::SNS::Topic")
    key = _ref(template_json, "AlertsKey", "AWS::KMS::Key")
    role = _node_role(synthesized)
    statements = [s for p in resources(template_json, "AWS::IAM::Policy").values()
                  if {"Ref": role} in p["Properties"]["Roles"] for s in p["Properties"]["PolicyDocument"]["Statement"]]

    def actions(statement: dict) -> list[str]:
        return statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]

    sns = [s for s in statements if any(a.startswith("sns:") for a in actions(s))]
    assert [(actions(s), s["Resource"]) for s in sns] == [(["sns:Publish"], {"Ref": topic})]
    kms = [s for s in statements if any(a.startswith("kms:") for a in actions(s))]
    assert [(sorted(actions(s)), s["Resource"]) for s in kms] == [
        (["kms:Decrypt", "kms:GenerateDataKey"], {"Fn::GetAtt": [key, "Arn"]})]


def test_no_monitoring_port_is_opened_and_the_scraped_ports_are_open_inside_the_group(synthesized):
    template_json = synthesized.template_json
    group = {"Fn::GetAtt": [_ref(template_json, "EfaSecurityGroup", "AWS::EC2::SecurityGroup"), "GroupId"]}
    ingress = [r["Properties"] for r in resources(template_json, "AWS::EC2::SecurityGroupIngress").values()]

    def covers(rule: dict, port: int) -> bool:
        return rule["IpProtocol"] == "-1" or (rule["IpProtocol"] == "tcp"
                                              and rule["FromPort"] <= port <= rule["ToPort"])

    for port in (9090, 9093, 3000):  # bound to 127.0.0.1 on the head: SSM port forwarding only
        assert all(r.get("SourceSecurityGroupId") == group for r in ingress if covers(r, port)), port
    for port in (9400, 9500, 9507):  # agents and ranks, scraped by the head's Prometheus
        assert any(r.get("SourceSecurityGroupId") == group and covers(r, port) for r in ingress), port


def test_grafana_on_the_head_only_with_the_context(tmp_path):
    from ddlc.errors import UserError
    from ddlc.infra.app import build_app
    from tests.infra.conftest import cdk_context

    context = copy.deepcopy(cdk_context())
    context.update(environment="prod", grafana="head")
    _, stack = build_app(context, outdir=str(tmp_path), dashboards=())
    head, worker = stack.boot_configs["head"], stack.boot_configs["worker"]
    assert head.grafana and head.runs_monitoring and not worker.runs_monitoring
    text = "\n".join(render_user_data(head))
    assert f"install prometheus prometheus-alertmanager grafana={GRAFANA_VERSION} || ddlc_fail" in text
    assert "signed-by=/usr/share/keyrings/grafana.gpg" in text and " --grafana ||" in text
    assert "systemctl restart ddlc-prometheus.service ddlc-alertmanager.service grafana-server.service" in text
    context["grafana"] = "cloud"
    with pytest.raises(UserError, match=r"^context 'grafana': 'cloud' is not one of none, head$"):
        build_app(context, outdir=str(tmp_path / "bad"), dashboards=())


def test_prometheus_retention_is_sized_to_the_disk():
    from ddlc.errors import UserError
    from ddlc.infra.settings import load_environment
    from tests.infra.conftest import cdk_context

    environments = copy.deepcopy(cdk_context()["environments"])
    assert load_environment(environments, "prod").prometheus_retention_gib == 50  # 200 GiB root: a quarter
    environments["prod"].update(root_volume_gib=400, monitoring_retention_gib=150)
    assert load_environment(environments, "prod").prometheus_retention_gib == 150
    environments["prod"]["monitoring_retention_gib"] = 250
    with pytest.raises(UserError, match=r"^environments.prod: monitoring_retention_gib 250 is more than half"):
        load_environment(environments, "prod")
