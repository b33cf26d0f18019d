"""`npx cdk synth --context environment=prod` through the real CDK CLI, exactly as the runbook runs it.

Skipped only on a developer machine without `npm install`; in CI (CI=true) a missing CLI is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.infra.conftest import REPO_ROOT

CDK = REPO_ROOT / "node_modules" / ".bin" / "cdk"
IN_CI = os.environ.get("CI", "").lower() == "true"

pytestmark = pytest.mark.skipif(
    not CDK.exists() and not IN_CI, reason="CDK CLI not installed (run `make node_modules`); required in CI"
)


def _run_cdk(*args: str, outdir) -> subprocess.CompletedProcess:
    assert CDK.exists(), "node_modules/.bin/cdk missing: `make test` runs `npm install` first"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    env.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    env["CDK_DISABLE_CLI_TELEMETRY"] = "true"
    # No AWS account is needed to synth; make sure none is used.
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true")
    command = [str(CDK), *args, "--output", str(outdir), "--no-notices", "--no-version-reporting"]
    if not (REPO_ROOT / ".venv" / "bin" / "python").exists():
        command += ["--app", f"{sys.executable} -m ddlc.infra.app"]  # dev machine without `make venv`
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cdk_synth_prod(tmp_path):
    result = _run_cdk("synth", "--context", "environment=prod", "--quiet", outdir=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    template = json.loads((tmp_path / "ddlc-prod.template.json").read_text())
    instance_types = {r["Properties"]["LaunchTemplateData"]["InstanceType"]
                      for r in template["Resources"].values() if r["Type"] == "AWS::EC2::LaunchTemplate"}
    assert "p4d.24xlarge" in instance_types


def test_cdk_synth_unknown_environment_fails_with_choices(tmp_path):
    result = _run_cdk("synth", "--context", "environment=qa", "--quiet", outdir=tmp_path)
    assert result.returncode != 0
    assert "unknown environment 'qa'; valid choices: dev, prod" in result.stderr
    assert "Traceback" not in result.stderr
