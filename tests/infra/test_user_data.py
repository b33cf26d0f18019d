"""The node boot script: valid bash, and it does what the nodes need."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from ddlc.infra.user_data import NodeBootConfig, cloudwatch_agent_config, render_user_data


def _boot(**changes) -> NodeBootConfig:
    values = dict(
        cluster_name="ddlc-prod", environment="prod", role="worker", region="us-east-1", bucket_name="ckpt-bucket",
        node_count=4, gpus_per_node=8, ddlc_package="ddlc==0.1.0", node_log_group="/ddlc/prod/nodes", has_gpu=True,
    )
    values.update(changes)
    return NodeBootConfig(**values)


@pytest.mark.parametrize("boot", [_boot(), _boot(role="head", has_gpu=False),
                                  _boot(lustre_dns_name="fs-1.fsx.us-east-1.amazonaws.com", lustre_mount_name="abcd")])
def test_script_is_valid_bash(tmp_path, boot):
    script = tmp_path / "user-data.sh"
    script.write_text("#!/bin/bash\n" + "\n".join(render_user_data(boot)) + "\n")
    result = subprocess.run([shutil.which("bash") or "/bin/bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_script_installs_ddlc_into_pytorch_env_and_writes_cluster_env():
    text = "\n".join(render_user_data(_boot()))
    assert "/opt/conda/envs/pytorch/bin/python" in text
    assert "-m pip install --quiet ddlc==0.1.0 boto3" in text
    for line in ("DDLC_CLUSTER=ddlc-prod", "DDLC_CHECKPOINT_BUCKET=ckpt-bucket", "DDLC_NODE_COUNT=4",
                 "DDLC_GPUS_PER_NODE=8"):
        assert line in text
    assert "ExecStart=/usr/local/bin/ddlc agent --host 0.0.0.0 --port 9400" in text
    assert '--expect "$DDLC_NODE_COUNT" --output "$DDLC_HOSTFILE"' in text


def test_cloudwatch_agent_collects_gpu_metrics_per_cluster():
    config = cloudwatch_agent_config(_boot())
    gpu = config["metrics"]["metrics_collected"]["nvidia_gpu"]
    assert {"utilization_gpu", "memory_used", "memory_total"} <= set(gpu["measurement"])
    assert gpu["append_dimensions"] == {"ClusterName": "ddlc-prod"}
    assert ["ClusterName"] in config["metrics"]["aggregation_dimensions"]
    assert "nvidia_gpu" not in cloudwatch_agent_config(_boot(has_gpu=False))["metrics"]["metrics_collected"]
    json.dumps(config)  # must serialize as the agent's JSON file
