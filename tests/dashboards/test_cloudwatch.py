"""The four CloudWatch dashboards in the synthesized stack (cdk-nag on), generated from the same definition,
and cfn-lint clean."""

from __future__ import annotations

import json

import pytest

from ddlc.dashboards.definition import DASHBOARDS


@pytest.fixture(scope="module")
def synthesized():
    from ddlc.dashboards.cloudwatch import standard_dashboards
    from tests.infra.conftest import synth

    return synth("prod", dashboards=tuple(standard_dashboards()))


def _bodies(template_json) -> dict[str, dict]:
    """DashboardName -> parsed body; the body is a Fn::Join of strings and {Ref: AWS::Region}."""
    bodies = {}
    for resource in template_json["Resources"].values():
        if resource["Type"] != "AWS::CloudWatch::Dashboard":
            continue
        parts = resource["Properties"]["DashboardBody"]["Fn::Join"][1]
        text = "".join(p if isinstance(p, str) else "us-east-1" for p in parts)
        bodies[resource["Properties"]["DashboardName"]] = json.loads(text)
    return bodies


def test_four_dashboards_named_after_the_cluster(synthesized):
    synthesized.template.resource_count_is("AWS::CloudWatch::Dashboard", 4)
    assert set(_bodies(synthesized.template_json)) == {f"ddlc-prod-{d.slug}" for d in DASHBOARDS}


def test_widgets_follow_the_definition(synthesized):
    bodies = _bodies(synthesized.template_json)
    for board in DASHBOARDS:
        widgets = bodies[f"ddlc-prod-{board.slug}"]["widgets"]
        titles = [w["properties"].get("title") for w in widgets if w["type"] == "metric"]
        assert titles == [p.title for p in board.panels if p.has("cloudwatch")]
        for widget in widgets:
            assert widget["x"] + widget["width"] <= 24


def test_gpu_panels_read_the_agent_and_the_alarm_series(synthesized):
    widgets = {w["properties"].get("title"): w for w in _bodies(synthesized.template_json)["ddlc-prod-gpu-cluster-health"]["widgets"]}
    per_gpu = widgets["GPU utilization"]["properties"]
    expression = per_gpu["metrics"][0][0]["expression"]
    assert 'MetricName="nvidia_smi_utilization_gpu"' in expression and 'ClusterName="ddlc-prod"' in expression
    assert per_gpu["annotations"]["horizontal"][0]["value"] == 80
    assert per_gpu["yAxis"]["left"]["max"] == 100
    # The mean is the alarm's own metric: CWAgent nvidia_smi_utilization_gpu rolled up by ClusterName.
    mean = widgets["Mean GPU utilization"]["properties"]["metrics"][0]
    assert mean[:4] == ["CWAgent", "nvidia_smi_utilization_gpu", "ClusterName", "ddlc-prod"]
    alarm = next(r for r in synthesized.template_json["Resources"].values()
                 if r["Type"] == "AWS::CloudWatch::Alarm" and "GPU utilization" in r["Properties"].get("AlarmDescription", ""))
    assert alarm["Properties"]["MetricName"] == "nvidia_smi_utilization_gpu"


def test_training_and_cost_panels_read_the_runtime_namespace(synthesized):
    bodies = _bodies(synthesized.template_json)
    loss = next(w for w in bodies["ddlc-prod-training-progress"]["widgets"] if w["properties"].get("title") == "Training loss")
    assert '{DDLC,node,rank,run} MetricName="ddlc_train_loss"' in loss["properties"]["metrics"][0][0]["expression"]
    cost = next(w for w in bodies["ddlc-prod-cost-tracking"]["widgets"] if w["properties"].get("title") == "Cost so far")
    assert cost["properties"]["view"] == "singleValue"
    assert "ddlc_cost_usd_per_hour" in cost["properties"]["metrics"][0][0]["expression"]


def test_agent_config_collects_what_the_network_panels_read(synthesized):
    from ddlc.infra.user_data import NodeBootConfig, cloudwatch_agent_config

    boot = NodeBootConfig(cluster_name="c", environment="prod", role="worker", region="us-east-1", bucket_name="b",
                          node_count=1, gpus_per_node=8, node_log_group="g", has_gpu=True,
                          package_parameter="/ddlc/prod/node-package", ssh_secret_id="s", cluster_cidr="10.42.0.0/16",
                          worker_group_name="c-workers")
    collected = cloudwatch_agent_config(boot)["metrics"]["metrics_collected"]
    assert {"bytes_sent", "bytes_recv", "packets_recv", "err_in", "err_out"} <= set(collected["net"]["measurement"])
    assert collected["cpu"]["measurement"] == ["usage_active"]


def test_cfn_lint_passes_with_the_dashboards(synthesized):
    from cfnlint.api import lint  # in-process: a third of the CLI's start-up time

    matches = lint(synthesized.template_path.read_text())
    assert matches == [], "\n".join(str(m) for m in matches)


def test_the_cdk_app_builds_the_four_by_default(tmp_path):
    """`cdk synth` runs build_app() with no arguments: the standard dashboards must be in it."""
    import copy

    from ddlc.infra.app import build_app
    from tests.infra.conftest import cdk_context

    context = copy.deepcopy(cdk_context())
    context["environment"] = "dev"
    _, stack = build_app(context, outdir=str(tmp_path))
    assert sorted(stack.dashboards.dashboards) == sorted(d.slug for d in DASHBOARDS)
    _, bare = build_app(context, outdir=str(tmp_path / "bare"), dashboards=())
    assert bare.dashboards.dashboards == {}
