"""Boot script for cluster nodes: install ddlc, write the hostfile, start the metrics agents.

Rendered from plain Python so tests can read it; CloudFormation tokens (bucket name, file system DNS) may be
embedded in the values and are resolved at deploy time.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Optional

AGENT_PORT = 9400
CLOUDWATCH_AGENT_CONFIG = "/opt/aws/amazon-cloudwatch-agent/etc/ddlc.json"
HOSTFILE = "/etc/ddlc/hostfile"
CLUSTER_ENV = "/etc/ddlc/cluster.env"
HOSTFILE_SCRIPT = "/usr/local/sbin/ddlc-write-hostfile"
# Dimension added to every GPU metric the CloudWatch agent publishes, and the one the alarms watch.
CLUSTER_DIMENSION = "ClusterName"


@dataclass(frozen=True)
class NodeBootConfig:
    cluster_name: str
    environment: str
    role: str  # "head" or "worker"
    region: str
    bucket_name: str
    node_count: int
    gpus_per_node: int
    ddlc_package: str
    node_log_group: str
    has_gpu: bool
    lustre_dns_name: Optional[str] = None
    lustre_mount_name: Optional[str] = None
    lustre_mount_path: str = "/fsx"


def cloudwatch_agent_config(boot: NodeBootConfig) -> dict:
    """CloudWatch agent: NVIDIA GPU metrics (GPU nodes) rolled up per cluster, plus ddlc's log files."""
    metrics: dict = {
        "namespace": "CWAgent",
        "append_dimensions": {"InstanceId": "${aws:InstanceId}", "InstanceType": "${aws:InstanceType}"},
        # Per-cluster roll-up (the alarm's view) next to the per-instance series.
        "aggregation_dimensions": [[CLUSTER_DIMENSION], ["InstanceId"]],
        "metrics_collected": {
            "mem": {"measurement": ["mem_used_percent"], "append_dimensions": {CLUSTER_DIMENSION: boot.cluster_name}},
            "disk": {
                "measurement": ["used_percent"],
                "resources": ["/"],
                "append_dimensions": {CLUSTER_DIMENSION: boot.cluster_name},
            },
            # For the dashboards (ddlc.dashboards): host CPU and per-interface traffic of every node.
            "cpu": {
                "measurement": ["usage_active"],
                "totalcpu": True,
                "append_dimensions": {CLUSTER_DIMENSION: boot.cluster_name},
            },
            "net": {
                "measurement": ["bytes_sent", "bytes_recv", "packets_recv", "err_in", "err_out"],
                "resources": ["*"],
                "append_dimensions": {CLUSTER_DIMENSION: boot.cluster_name},
            },
        },
    }
    if boot.has_gpu:
        metrics["metrics_collected"]["nvidia_gpu"] = {
            "measurement": ["utilization_gpu", "memory_used", "memory_total", "temperature_gpu", "power_draw"],
            "metrics_collection_interval": 60,
            "append_dimensions": {CLUSTER_DIMENSION: boot.cluster_name},
        }
    return {
        "agent": {"metrics_collection_interval": 60, "run_as_user": "root"},
        "metrics": metrics,
        "logs": {
            "logs_collected": {
                "files": {
                    "collect_list": [
                        {
                            "file_path": "/var/log/ddlc/*.log",
                            "log_group_name": boot.node_log_group,
                            "log_stream_name": "{instance_id}/ddlc",
                        },
                        {
                            "file_path": "/var/log/ddlc-bootstrap.log",
                            "log_group_name": boot.node_log_group,
                            "log_stream_name": "{instance_id}/bootstrap",
                        },
                    ]
                }
            }
        },
    }


def render_user_data(boot: NodeBootConfig) -> list[str]:
    """The boot script as lines (for `ec2.UserData.add_commands`)."""
    env_lines = {
        "DDLC_CLUSTER": boot.cluster_name,
        "DDLC_ENVIRONMENT": boot.environment,
        "DDLC_ROLE": boot.role,
        "AWS_DEFAULT_REGION": boot.region,
        "DDLC_CHECKPOINT_BUCKET": boot.bucket_name,
        "DDLC_NODE_COUNT": str(boot.node_count),
        "DDLC_GPUS_PER_NODE": str(boot.gpus_per_node),
        "DDLC_METRICS_NAMESPACE": "DDLC",
        "DDLC_HOSTFILE": HOSTFILE,
        # torchrun --max_restarts across nodes: restarted workers must not reuse the last attempt's store
        # (pytorch/pytorch#135712); the runbook sources this file before torchrun.
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }
    lustre_lines: list[str] = []
    if boot.lustre_dns_name and boot.lustre_mount_name:
        source = f"{boot.lustre_dns_name}@tcp:/{boot.lustre_mount_name}"
        lustre_lines = [
            f"mkdir -p {boot.lustre_mount_path}",
            "command -v mount.lustre >/dev/null || apt-get install -y lustre-client-modules-$(uname -r) "
            "|| echo 'ddlc: Lustre client unavailable; /fsx not mounted'",
            f"grep -q ' {boot.lustre_mount_path} ' /etc/fstab || echo '{source} {boot.lustre_mount_path} lustre "
            "defaults,noatime,flock,_netdev,x-systemd.automount 0 0' >> /etc/fstab",
            f"mount {boot.lustre_mount_path} || echo 'ddlc: mounting {boot.lustre_mount_path} failed'",
        ]
    agent_config = json.dumps(cloudwatch_agent_config(boot), indent=1)
    lines = [
        "set -euo pipefail",
        "exec > >(tee -a /var/log/ddlc-bootstrap.log) 2>&1",
        "mkdir -p /etc/ddlc /var/log/ddlc",
        f"cat > {CLUSTER_ENV} <<'DDLC_ENV'",
        *[f"{key}={value}" for key, value in env_lines.items()],
        "DDLC_ENV",
        # Monitoring first: GPU metrics and boot logs are wanted even if a later step fails.
        # CloudWatch agent: install when the AMI lacks it, then load ddlc's config.
        "if [ ! -x /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl ]; then",
        f"  curl -fsSL -o /tmp/amazon-cloudwatch-agent.deb https://amazoncloudwatch-agent-{boot.region}.s3."
        f"{boot.region}.amazonaws.com/ubuntu/amd64/latest/amazon-cloudwatch-agent.deb",
        "  dpkg -i -E /tmp/amazon-cloudwatch-agent.deb",
        "fi",
        f"mkdir -p $(dirname {CLOUDWATCH_AGENT_CONFIG})",
        f"cat > {CLOUDWATCH_AGENT_CONFIG} <<'CWAGENT'",
        *agent_config.splitlines(),
        "CWAGENT",
        "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 "
        f"-c file:{CLOUDWATCH_AGENT_CONFIG} -s",
        *lustre_lines,
        # Deep Learning AMIs ship PyTorch in a conda env named `pytorch`; newer ones in a venv at /opt/pytorch.
        "if [ -x /opt/conda/envs/pytorch/bin/python ]; then DDLC_PY=/opt/conda/envs/pytorch/bin/python",
        "elif [ -x /opt/pytorch/bin/python ]; then DDLC_PY=/opt/pytorch/bin/python",
        "else DDLC_PY=python3; fi",
        # boto3 is all `ddlc cluster hosts` needs on a node (the AMI usually has it already).
        f'"$DDLC_PY" -m pip install --quiet {shlex.quote(boot.ddlc_package)} boto3',
        'ln -sf "$(dirname "$DDLC_PY")/ddlc" /usr/local/bin/ddlc',
        # Peers are found by tag; retry until every worker is running, then keep it fresh every 5 minutes.
        f"cat > {HOSTFILE_SCRIPT} <<'SCRIPT'",
        "#!/bin/bash",
        f"source {CLUSTER_ENV}",
        "for attempt in $(seq 1 90); do",
        '  if /usr/local/bin/ddlc cluster hosts --cluster "$DDLC_CLUSTER" --region "$AWS_DEFAULT_REGION" '
        '--expect "$DDLC_NODE_COUNT" --output "$DDLC_HOSTFILE" > /etc/ddlc/master.env.new; then',
        "    mv /etc/ddlc/master.env.new /etc/ddlc/master.env; exit 0",
        "  fi",
        "  sleep 10",
        "done",
        "exit 1",
        "SCRIPT",
        f"chmod 755 {HOSTFILE_SCRIPT}",
        "cat > /etc/systemd/system/ddlc-hostfile.service <<'UNIT'",
        "[Unit]",
        "Description=ddlc: write the cluster hostfile from EC2 tags",
        "After=network-online.target",
        "[Service]",
        "Type=oneshot",
        f"ExecStart={HOSTFILE_SCRIPT}",
        "UNIT",
        "cat > /etc/systemd/system/ddlc-hostfile.timer <<'UNIT'",
        "[Unit]",
        "Description=ddlc: refresh the cluster hostfile",
        "[Timer]",
        "OnBootSec=1min",
        "OnUnitActiveSec=5min",
        "[Install]",
        "WantedBy=timers.target",
        "UNIT",
        # Node metrics agent (Prometheus exposition on :9400, reachable only from cluster members).
        "cat > /etc/systemd/system/ddlc-agent.service <<'UNIT'",
        "[Unit]",
        "Description=ddlc node metrics agent",
        "After=network-online.target",
        "[Service]",
        f"EnvironmentFile={CLUSTER_ENV}",
        # All interfaces: the head node's Prometheus scrapes every node; the EFA security group admits only
        # cluster members, so the port is not reachable from anywhere else.
        f"ExecStart=/usr/local/bin/ddlc agent --host 0.0.0.0 --port {AGENT_PORT}",
        "Restart=always",
        "RestartSec=5",
        "StandardOutput=append:/var/log/ddlc/agent.log",
        "StandardError=append:/var/log/ddlc/agent.log",
        "[Install]",
        "WantedBy=multi-user.target",
        "UNIT",
        "systemctl daemon-reload",
        "systemctl enable --now ddlc-agent.service ddlc-hostfile.timer",
        "systemctl start --no-block ddlc-hostfile.service",
    ]
    lines.append("echo 'ddlc: node bootstrap finished'")
    return lines
