"""cdk-nag AwsSolutions passes (and really runs), every acknowledgment has a reason, cfn-lint is clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.conftest import REPO_ROOT, synth


def test_nag_passes_for_every_environment(synthesized):
    # app.synth() in the fixture raises on any unacknowledged AwsSolutions finding.
    assert synthesized.template_json["Resources"]


def test_nag_really_runs_and_fails_on_a_violation(tmp_path):
    import copy

    from aws_cdk import aws_s3 as s3

    from ddlc.infra.app import build_app
    from tests.infra.conftest import cdk_context

    context = copy.deepcopy(cdk_context())
    context["environment"] = "dev"
    app, stack = build_app(context, outdir=str(tmp_path))
    s3.Bucket(stack, "PlainBucket")  # no TLS enforcement, no access logs
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = (tmp_path / "validation-report.json").read_text()
    assert "AwsSolutions-S10" in report and "PlainBucket" in report


def _acknowledgments(construct) -> list[dict]:
    from aws_cdk import Validations

    found = []
    for node in construct.node.find_all():
        for entry in node.node.metadata:
            if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                found.append({"path": node.node.path, "data": entry.data})
    return found


def test_every_acknowledgment_carries_a_reason(synthesized):
    acknowledged = _acknowledgments(synthesized.stack)
    assert acknowledged, "expected the IAM/EC2/S3 acknowledgments"
    ids = []
    for item in acknowledged:
        for rule_id, reason in dict(item["data"]).items():
            if "AwsSolutions" not in rule_id:
                continue  # CDK's own CloudFormation-Validate acknowledgments
            ids.append(rule_id.split("::", 1)[-1])
            assert len(str(reason).strip()) >= 30, f"{item['path']}: {rule_id} has no real reason"
    assert any(i.startswith("AwsSolutions-IAM4") for i in ids) and "AwsSolutions-EC29" in ids


def _cfn_lint() -> str:
    candidate = Path(sys.executable).with_name("cfn-lint")
    return str(candidate) if candidate.exists() else (shutil.which("cfn-lint") or "cfn-lint")


def test_cfn_lint_passes_on_synthesized_templates():
    paths = [str(synth(name).template_path) for name in ("dev", "prod")]
    paths.append(str(synth("prod", instance_type="p5.48xlarge", capacity_reservation_id="cr-0123456789abcdef0",
                           capacity_block=True).template_path))
    paths.append(str(synth("prod", capacity_reservation_id="cr-0123456789abcdef0",
                           placement_group_name="odcr-pg").template_path))
    result = subprocess.run([_cfn_lint(), *paths], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
