"""`ddlc cluster status|connect|hosts` as real processes against the session's moto server on 127.0.0.1. The
server is shared, so the fake cluster has a name of its own (environment `clitest`, stack ddlc-clitest): `ddlc-prod`
is tests/infra/test_deploy_moto.py's."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from tests.infra.test_discovery import REGION, deploy_fake_cluster

REPO_ROOT = Path(__file__).resolve().parents[2]


ENV = "clitest"  # no cdk.json where these run: `--env clitest` names the stack ddlc-clitest


@pytest.fixture(scope="module")
def moto_endpoint(moto):
    fake = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": moto.url}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in fake.items():
            patch.setenv(key, value)
        cluster = deploy_fake_cluster(f"ddlc-{ENV}", workers=2)
        yield {"env": fake, "cluster": cluster}


def ddlc(*args: str, env: dict, cwd: Path, path_prefix: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")]))
    if path_prefix:
        full_env["PATH"] = f"{path_prefix}{os.pathsep}{full_env['PATH']}"
    return subprocess.run([sys.executable, "-m", "ddlc", "cluster", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


def test_status_shows_outputs_and_nodes(moto_endpoint, tmp_path):
    result = ddlc("status", "--env", ENV, env=moto_endpoint["env"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cluster = moto_endpoint["cluster"]
    assert f"ddlc-{ENV}" in result.stdout and "CREATE_COMPLETE" in result.stdout
    assert cluster["connect"] in result.stdout
    for instance_id in [cluster["head"], *cluster["workers"].values()]:
        assert instance_id in result.stdout


def test_hosts_writes_hostfile_and_prints_master_addr(moto_endpoint, tmp_path):
    result = ddlc("hosts", "--env", ENV, "--output", "hostfile", env=moto_endpoint["env"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ec2 = boto3.client("ec2", region_name=REGION)
    worker0 = moto_endpoint["cluster"]["workers"][0]
    ip0 = ec2.describe_instances(InstanceIds=[worker0])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
    assert result.stdout == f"MASTER_ADDR={ip0}\n"
    lines = (tmp_path / "hostfile").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == f"{ip0} slots=8"


def test_connect_runs_the_ssm_session_command(moto_endpoint, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / "aws"
    recorder.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'aws-args'}\nexit 7\n")
    recorder.chmod(recorder.stat().st_mode | stat.S_IEXEC)
    result = ddlc("connect", "--env", ENV, env=moto_endpoint["env"], cwd=tmp_path, path_prefix=bin_dir)
    head = moto_endpoint["cluster"]["head"]
    assert (tmp_path / "aws-args").read_text().strip() == f"ssm start-session --target {head} --region {REGION}"
    assert result.returncode == 7  # the session's exit code is passed through
    dry = ddlc("connect", "--env", ENV, "--dry-run", env=moto_endpoint["env"], cwd=tmp_path)
    assert dry.stdout.strip() == f"aws ssm start-session --target {head} --region {REGION}"


def test_missing_stack_is_one_line_exit_2(moto_endpoint, tmp_path):
    # A name no test deploys (the shared server may hold other tests' stacks, ddlc-dev among them some day).
    result = ddlc("status", "--env", "never-deployed", env=moto_endpoint["env"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: no stack 'ddlc-never-deployed' in {REGION}: deploy it with "
                                     "`npx cdk deploy --context environment=...`")


def test_unknown_env_in_cdk_json_lists_choices(moto_endpoint):
    result = ddlc("hosts", "--env", "qa", env=moto_endpoint["env"], cwd=REPO_ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --env: unknown environment 'qa'; valid choices: dev, prod"


def test_no_credentials_is_one_line_exit_2(tmp_path):
    env = {"AWS_DEFAULT_REGION": REGION, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"}
    result = ddlc("status", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: describing stack 'ddlc-prod': no AWS credentials found")
    assert len(result.stderr.strip().splitlines()) == 1


def test_connect_dry_run_without_credentials_shows_the_command(tmp_path):
    """#13: a dry run needs no AWS account; it shows the command and says the head node's id was not looked up."""
    no_credentials = {"HOME": str(tmp_path), "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                      "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": REGION}
    result = ddlc("connect", "--env", "prod", "--dry-run", env=no_credentials, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"aws ssm start-session --target <ddlc-prod HeadNodeId> --region {REGION}"
    assert "no AWS credentials" in result.stderr and "Traceback" not in result.stderr
    real = ddlc("connect", "--env", "prod", env=no_credentials, cwd=tmp_path)
    assert real.returncode == 2 and real.stderr.count("\n") == 1 and "no AWS credentials" in real.stderr
