"""The node boot script as text: valid bash, installs ddlc only from the stack's package, fails loudly.

tests/infra/test_boot_script.py runs it for real in a throwaway root."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess

import pytest

from ddlc.infra.user_data import NodeBootConfig, cloudwatch_agent_config, prometheus_scrape_config, render_user_data


def boot_config(**changes) -> NodeBootConfig:
    values = dict(
        cluster_name="ddlc-prod", environment="prod", role="worker", region="us-east-1", bucket_name="ckpt-bucket",
        node_count=4, gpus_per_node=8, node_log_group="/ddlc/prod/nodes", training_log_group="/ddlc/prod/training",
        has_gpu=True, package_parameter="/ddlc/prod/node-package",
        ssh_secret_id="arn:aws:secretsmanager:us-east-1:123456789012:secret:ssh-AbCdEf", cluster_cidr="10.42.0.0/16",
        worker_group_name="ddlc-prod-workers",
    )
    values.update(changes)
    return NodeBootConfig(**values)


LUSTRE = dict(lustre_dns_name="fs-1.fsx.us-east-1.amazonaws.com", lustre_mount_name="abcd")


@pytest.mark.parametrize("boot", [boot_config(), boot_config(role="head", has_gpu=False), boot_config(**LUSTRE)])
def test_script_is_valid_bash(tmp_path, boot):
    script = tmp_path / "user-data.sh"
    script.write_text("#!/bin/bash\n" + "\n".join(render_user_data(boot)) + "\n")
    result = subprocess.run([shutil.which("bash") or "/bin/bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_nothing_is_installed_by_bare_name_from_an_index():
    text = "\n".join(render_user_data(boot_config(**LUSTRE)))
    pip_lines = [line for line in text.splitlines() if "PIP[@]" in line]
    assert len(pip_lines) == 2
    # Exact pins (no resolution), then the wheel by path with its extras and no index at all.
    assert "--no-deps -r /opt/ddlc/package/requirements.txt" in pip_lines[0]
    assert '--no-index -c /opt/ddlc/package/requirements.txt "/opt/ddlc/package/$WHEEL[s3,cloudwatch]"' in pip_lines[1]
    assert not re.search(r"pip install[^\n]*\bddlc==", text)
    assert not re.search(r"pip install[^\n]* boto3", text)
    # The package location is read at boot, so a version bump does not change the launch template.
    assert "aws ssm get-parameter --region us-east-1 --name /ddlc/prod/node-package" in text
    assert ".whl" not in text


def test_no_python_fallback_and_no_dangling_symlink():
    text = "\n".join(render_user_data(boot_config()))
    assert "DDLC_PY=python3" not in text
    assert "ddlc_fail 'no PyTorch environment" in text
    assert 'if [ ! -x "$DDLC_BIN" ]; then ddlc_fail' in text  # checked before the link is made
    assert text.index('[ ! -x "$DDLC_BIN" ]') < text.index('ln -sf "$DDLC_BIN" /usr/local/bin/ddlc')


def test_writes_cluster_env_and_units():
    text = "\n".join(render_user_data(boot_config()))
    for line in ("DDLC_CLUSTER=ddlc-prod", "DDLC_CHECKPOINT_BUCKET=ckpt-bucket", "DDLC_NODE_COUNT=4",
                 "DDLC_GPUS_PER_NODE=8", "DDLC_WORKER_GROUP=ddlc-prod-workers"):
        assert line in text
    assert "ExecStart=/usr/local/bin/ddlc agent --host 0.0.0.0 --port 9400" in text
    assert '--expect "$DDLC_NODE_COUNT" --output "$DDLC_HOSTFILE"' in text


def test_lustre_failures_stop_the_boot():
    text = "\n".join(render_user_data(boot_config(**LUSTRE)))
    assert "fsx-lustre-client-repo.s3.amazonaws.com/ubuntu $VERSION_CODENAME main" in text
    assert "apt-get update" in text and "lustre-client-modules-$(uname -r)" in text
    assert "|| echo 'ddlc:" not in text and "|| true" not in text  # nothing swallowed
    assert "mount /fsx || ddlc_fail" in text
    assert "mount.lustre" not in "\n".join(render_user_data(boot_config()))


def test_cloudwatch_agent_collects_gpu_metrics_and_logs_per_cluster():
    config = cloudwatch_agent_config(boot_config())
    gpu = config["metrics"]["metrics_collected"]["nvidia_gpu"]
    assert {"utilization_gpu", "memory_used", "memory_total"} <= set(gpu["measurement"])
    assert gpu["append_dimensions"] == {"ClusterName": "ddlc-prod"}
    assert ["ClusterName"] in config["metrics"]["aggregation_dimensions"]
    files = {entry["file_path"]: entry["log_group_name"] for entry in config["logs"]["logs_collected"]["files"]["collect_list"]}
    assert files["/var/log/kern.log"] == "/ddlc/prod/nodes"
    assert files["/var/log/ddlc/training/*.log"] == "/ddlc/prod/training"
    head = cloudwatch_agent_config(boot_config(has_gpu=False))
    assert "nvidia_gpu" not in head["metrics"]["metrics_collected"] and "metrics_collected" not in head["logs"]
    json.dumps(config)  # must serialize as the agent's JSON file


def test_prometheus_scrape_labels_every_local_rank_with_the_cluster():
    import yaml

    config = yaml.safe_load(prometheus_scrape_config(boot_config()))
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    assert static["targets"] == [f"localhost:{9500 + rank}" for rank in range(8)]
    assert static["labels"] == {"ClusterName": "ddlc-prod"}


def test_user_data_fits_the_ec2_limit_with_long_resolved_values():
    # EC2 rejects user data over 16 KB; CloudFormation tokens resolve to names up to ~100 characters.
    long = "x" * 100
    boot = boot_config(bucket_name=long, node_log_group="/ddlc/" + long, training_log_group="/ddlc/" + long,
                       ssh_secret_id="arn:aws:secretsmanager:us-east-1:123456789012:secret:" + long,
                       lustre_dns_name=long, lustre_mount_name=long, cluster_name="ddlc-" + "y" * 15)
    text = "#!/bin/bash\n" + "\n".join(render_user_data(boot)) + "\n"
    assert len(text.encode()) < 14 * 1024, len(text.encode())


def test_a_failed_boot_removes_the_secret_copy():
    text = "\n".join(render_user_data(boot_config()))
    fail = text[text.index("ddlc_fail() {"):text.index("\n}", text.index("ddlc_fail() {"))]
    assert 'rm -f "${SSH_SEED:-}"' in fail


SLURM = dict(scheduler="slurm", munge_secret_id="arn:aws:secretsmanager:us-east-1:123456789012:secret:munge-AbCdEf")


@pytest.mark.parametrize("role", ["head", "worker"])
def test_slurm_script_is_valid_bash_and_fails_loudly(tmp_path, role):
    text = "\n".join(render_user_data(boot_config(role=role, has_gpu=role == "worker", **SLURM)))
    script = tmp_path / "user-data.sh"
    script.write_text("#!/bin/bash\n" + text + "\n")
    result = subprocess.run([shutil.which("bash") or "/bin/bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    daemon, other = ("slurmctld", "slurmd") if role == "head" else ("slurmd", "slurmctld")
    assert f"install munge slurm-client {daemon} || ddlc_fail" in text and other not in text
    assert "-o DPkg::Lock::Timeout=600" in text  # the AMI's unattended-upgrades holds the lock at first boot
    assert "--secret-id arn:aws:secretsmanager:us-east-1:123456789012:secret:munge-AbCdEf" in text
    assert "|| true" not in text
    # Slurm comes after ddlc (its command writes slurm.conf) and before the hostfile timer that re-runs it.
    assert text.index("/usr/local/bin/ddlc --help") < text.index("install munge") < text.index("ddlc-hostfile.timer")
    assert "did not start (ddlc cluster slurm-conf, above)'" in text and f"or {daemon} did not start" in text


def test_slurm_is_absent_without_the_scheduler_and_needs_the_munge_secret():
    assert "slurm" not in "\n".join(render_user_data(boot_config())).lower()
    with pytest.raises(ValueError, match="munge_secret_id"):
        boot_config(scheduler="slurm")
    with pytest.raises(ValueError, match="scheduler"):
        boot_config(scheduler="pbs")


def test_user_data_with_slurm_fits_the_ec2_limit_with_long_resolved_values():
    long = "x" * 100
    boot = boot_config(bucket_name=long, node_log_group="/ddlc/" + long, training_log_group="/ddlc/" + long,
                       ssh_secret_id="arn:aws:secretsmanager:us-east-1:123456789012:secret:" + long,
                       lustre_dns_name=long, lustre_mount_name=long, cluster_name="ddlc-" + "y" * 15,
                       scheduler="slurm", munge_secret_id="arn:aws:secretsmanager:us-east-1:123456789012:secret:" + long)
    # ... and the head node's, which also sets up Prometheus, Alertmanager and Grafana.
    head = dataclasses.replace(boot, role="head", has_gpu=False, grafana=True,
                               alert_topic_arn="arn:aws:sns:us-east-1:123456789012:" + long)
    for config in (boot, head):
        text = "#!/bin/bash\n" + "\n".join(render_user_data(config)) + "\n"
        assert len(text.encode()) < 14 * 1024, len(text.encode())
    assert "head-setup" in text
