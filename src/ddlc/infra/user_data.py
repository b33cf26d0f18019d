"""Boot script for cluster nodes: install ddlc from the stack's own package, set up ssh, hostfile and agents.

    cloud-init (root) runs, in order, failing the boot loudly (status file + log + non-zero exit) at any error:
      /etc/ddlc/cluster.env                    cluster name, role, region, bucket, worker group, ...
      CloudWatch agent                         metrics, kernel/ddlc/training logs, Prometheus scrape of the ranks
      AMI's PyTorch Python                     /opt/conda/envs/pytorch or /opt/pytorch (none: boot fails)
      ddlc package                             SSM parameter -> s3:// asset -> pinned requirements + wheel[extras]
      cluster ssh keys                         Secrets Manager secret -> ddlc.infra.ssh_key (keys, known_hosts)
      Slurm (scheduler=slurm)                  packages, munge key, slurm.conf, slurmctld|slurmd (slurm_boot.py)
      hostfile + master.env                    ddlc cluster hosts (systemd timer: every 5 minutes; with Slurm,
                                               then ddlc cluster slurm-conf)
      node agent                               ddlc agent on :9400 (systemd)
      Prometheus + Alertmanager (head)         scrape every node, alert to the SNS topic (monitoring_boot.py);
                                               Grafana too with grafana: head
      FSx for Lustre (when configured)         FSx client repository + lustre-client-modules, mount /fsx
      /var/lib/ddlc/boot-status                "ok", or "failed: <why>" (shown by `ddlc doctor`)

Rendered from plain Python so tests can read and run it; CloudFormation tokens (bucket, secret, file system)
may be embedded in the values and are resolved at deploy time. The package's location is read at boot from
an SSM parameter, not written here, so a new ddlc version changes no launch template and replaces no node.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Optional

from ddlc.infra.monitoring_boot import render_head_monitoring, targets_hook
from ddlc.infra.slurm_boot import hostfile_hook, render_slurm_boot

AGENT_PORT = 9400
# Training ranks serve Prometheus metrics on metrics_port + local_rank when monitoring.metrics_port is set.
TRAINING_METRICS_PORT = 9500
CLOUDWATCH_AGENT_CONFIG = "/opt/aws/amazon-cloudwatch-agent/etc/ddlc.json"
CLOUDWATCH_AGENT_PROMETHEUS = "/opt/aws/amazon-cloudwatch-agent/etc/ddlc-prometheus.yaml"
CLOUDWATCH_AGENT_CTL = "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl"
HOSTFILE = "/etc/ddlc/hostfile"
MASTER_ENV = "/etc/ddlc/master.env"
CLUSTER_ENV = "/etc/ddlc/cluster.env"
HOSTFILE_SCRIPT = "/usr/local/sbin/ddlc-write-hostfile"
BOOT_STATUS = "/var/lib/ddlc/boot-status"
PACKAGE_DIR = "/opt/ddlc/package"
TRAINING_LOG_DIR = "/var/log/ddlc/training"
# Dimension added to every metric the CloudWatch agent publishes, and the one the alarms watch.
CLUSTER_DIMENSION = "ClusterName"
# Metrics the CloudWatch agent takes from the ranks' Prometheus endpoints (EMF, namespace DDLC, ClusterName).
SCRAPED_TRAINING_METRICS = ("ddlc_checkpoint_last_success_timestamp_seconds",)
# ... of these checkpoint tiers only (label `tier`): the checkpoint-stale alarm is about the durable checkpoints;
# the host-memory tier's snapshots (memory, peer) land every few steps and would hide a stalled storage.
SCRAPED_CHECKPOINT_TIER = "storage"
# ... and what the CloudWatch training and cost dashboards read, with the dimensions they search for
# (ddlc.dashboards.definition: `{DDLC,node,rank,run}` per rank, `{DDLC,instance_type,run}` for the job's price).
SCRAPED_RANK_METRICS = ("ddlc_train_loss", "ddlc_train_learning_rate", "ddlc_train_grad_norm", "ddlc_train_step",
                        "ddlc_train_step_seconds", "ddlc_train_tokens_per_second")
SCRAPED_JOB_METRICS = ("ddlc_cost_usd_per_hour",)
SCRAPE_JOB = "ddlc-training"
FSX_KEY_URL = "https://fsx-lustre-client-repo-public-keys.s3.amazonaws.com/fsx-ubuntu-public-key.asc"
FSX_REPO_URL = "https://fsx-lustre-client-repo.s3.amazonaws.com/ubuntu"


@dataclass(frozen=True)
class NodeBootConfig:
    cluster_name: str
    environment: str
    role: str  # "head" or "worker"
    region: str
    bucket_name: str
    node_count: int
    gpus_per_node: int
    node_log_group: str
    has_gpu: bool
    package_parameter: str  # SSM parameter holding the s3:// URL of the ddlc package asset
    ssh_secret_id: str  # Secrets Manager secret the cluster ssh keys are derived from
    cluster_cidr: str  # only hosts in here are trusted by ssh
    worker_group_name: str
    training_log_group: str = ""
    ssh_users: tuple[str, ...] = ("ubuntu",)
    extras: tuple[str, ...] = ("s3", "cloudwatch")
    lustre_dns_name: Optional[str] = None
    lustre_mount_name: Optional[str] = None
    lustre_mount_path: str = "/fsx"
    gpus_scraped: int = 0  # ranks per node to scrape; 0: gpus_per_node
    scheduler: str = "none"  # "slurm": install and configure Slurm (slurm_boot.py)
    munge_secret_id: Optional[str] = None  # Secrets Manager secret holding the munge key (scheduler=slurm)
    worker_instance_type: str = ""  # the workers' type, on every node: `ddlc submit` on the head prices jobs with it
    # The head node's Prometheus + Alertmanager (monitoring_boot.py), alerting to this SNS topic; "": none.
    alert_topic_arn: str = ""
    prometheus_retention_gib: int = 50
    grafana: bool = False  # also Grafana on the head node, with the exported dashboards

    @property
    def runs_monitoring(self) -> bool:
        return self.role == "head" and bool(self.alert_topic_arn)

    def __post_init__(self) -> None:
        if self.scheduler not in ("slurm", "none"):
            raise ValueError(f"scheduler: '{self.scheduler}' is not slurm or none")
        if self.scheduler == "slurm" and not self.munge_secret_id:
            raise ValueError("scheduler=slurm needs munge_secret_id")


def prometheus_scrape_config(boot: NodeBootConfig) -> str:
    """The CloudWatch agent's Prometheus scrape config: this node's training ranks, labeled with the cluster."""
    ranks = boot.gpus_scraped or boot.gpus_per_node
    targets = ", ".join(f"'localhost:{TRAINING_METRICS_PORT + rank}'" for rank in range(ranks))
    return "\n".join([
        "global:",
        "  scrape_interval: 1m",
        "  scrape_timeout: 10s",
        "scrape_configs:",
        f"  - job_name: {SCRAPE_JOB}",
        "    static_configs:",
        f"      - targets: [{targets}]",
        "        labels:",
        f"          {CLUSTER_DIMENSION}: {boot.cluster_name}",
    ]) + "\n"


def cloudwatch_agent_config(boot: NodeBootConfig) -> dict:
    """CloudWatch agent: NVIDIA GPU metrics (GPU nodes) rolled up per cluster, the ranks' checkpoint timestamp,
    and ddlc's, the kernel's and the training logs (the alarms' metric filters read the last two)."""
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

    def collect(path: str, group: str, stream: str) -> dict:
        return {"file_path": path, "log_group_name": group, "log_stream_name": f"{{instance_id}}/{stream}"}

    training_group = boot.training_log_group or boot.node_log_group
    logs: dict = {
        "logs_collected": {
            "files": {
                "collect_list": [
                    collect("/var/log/ddlc/*.log", boot.node_log_group, "ddlc"),
                    collect("/var/log/ddlc-bootstrap.log", boot.node_log_group, "bootstrap"),
                    # Xid, OOM killer and EFA driver messages (metric filters in ddlc.infra.alarms).
                    collect("/var/log/kern.log", boot.node_log_group, "kernel"),
                    # Training output: `ddlc launch ... 2>&1 | tee /var/log/ddlc/training/<run>.log` (docs).
                    collect(f"{TRAINING_LOG_DIR}/*.log", training_group, "training"),
                ]
            }
        },
    }
    if boot.has_gpu:
        logs["metrics_collected"] = {
            "prometheus": {
                "cluster_name": boot.cluster_name,
                "log_group_name": training_group,
                "prometheus_config_path": CLOUDWATCH_AGENT_PROMETHEUS,
                "emf_processor": {
                    "metric_declaration_dedup": True,
                    "metric_namespace": "DDLC",
                    # Source labels' values are joined with ";" before the label_matcher is applied.
                    "metric_declaration": [
                        {
                            "source_labels": source_labels,
                            "label_matcher": matcher,
                            "dimensions": dimensions,
                            "metric_selectors": [f"^{name}$" for name in names],
                        }
                        for source_labels, matcher, dimensions, names in (
                            (["job", "tier"], f"^{SCRAPE_JOB};{SCRAPED_CHECKPOINT_TIER}$", [[CLUSTER_DIMENSION]],
                             SCRAPED_TRAINING_METRICS),
                            (["job"], f"^{SCRAPE_JOB}$", [["node", "rank", "run"]], SCRAPED_RANK_METRICS),
                            (["job"], f"^{SCRAPE_JOB}$", [["instance_type", "run"]], SCRAPED_JOB_METRICS),
                        )
                    ],
                },
            }
        }
    return {
        "agent": {"metrics_collection_interval": 60, "run_as_user": "root"},
        "metrics": metrics,
        "logs": logs,
    }


def _heredoc(path: str, marker: str, body: list[str]) -> list[str]:
    return [f"cat > {path} <<'{marker}'", *body, marker]


def _fail_if(condition: str, message: str) -> list[str]:
    return [f"if {condition}; then ddlc_fail {shlex.quote(message)}; fi"]


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
        "DDLC_WORKER_GROUP": boot.worker_group_name,
        **({"DDLC_WORKER_INSTANCE_TYPE": boot.worker_instance_type} if boot.worker_instance_type else {}),
        # torchrun --max_restarts across nodes: restarted workers must not reuse the last attempt's store
        # (pytorch/pytorch#135712); the runbook sources this file before torchrun.
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }
    region = shlex.quote(boot.region)
    extras = ",".join(boot.extras)
    agent_config = json.dumps(cloudwatch_agent_config(boot), separators=(",", ":"))  # compact: user data is at most 16 KB
    users = " ".join(f"--user {shlex.quote(user)}" for user in boot.ssh_users)
    lines = [
        "set -euo pipefail",
        "exec > >(tee -a /var/log/ddlc-bootstrap.log) 2>&1",
        f"mkdir -p /etc/ddlc /var/log/ddlc {TRAINING_LOG_DIR} $(dirname {BOOT_STATUS})",
        # Any failing step ends the boot with its reason in the status file, the log and the exit code.
        "ddlc_fail() {",
        # Never leave a cluster secret behind.
        "  rm -f \"${SSH_SEED:-}\"" + (" \"${MUNGE_KEY_TMP:-}\"" if boot.scheduler == "slurm" else ""),
        f"  echo \"failed: $1\" > {BOOT_STATUS}",
        "  echo \"ddlc: BOOT FAILED: $1\" >&2",
        "  exit 1",
        "}",
        "trap 'ddlc_fail \"command failed (line $LINENO): $BASH_COMMAND\"' ERR",
        f"echo running > {BOOT_STATUS}",
        *_heredoc(CLUSTER_ENV, "DDLC_ENV", [f"{key}={value}" for key, value in env_lines.items()]),
        # Instance identity from IMDSv2 (the launch template requires tokens).
        "IMDS_TOKEN=$(curl -fsS -X PUT http://169.254.169.254/latest/api/token "
        "-H 'X-aws-ec2-metadata-token-ttl-seconds: 300')",
        "INSTANCE_ID=$(curl -fsS -H \"X-aws-ec2-metadata-token: $IMDS_TOKEN\" "
        "http://169.254.169.254/latest/meta-data/instance-id)",
        f"echo \"DDLC_INSTANCE_ID=$INSTANCE_ID\" >> {CLUSTER_ENV}",
        # A worker's own type prices its idle hours (the agent's ddlc_node_price_usd_per_hour; every type in the
        # instance table has a price). The head node's type is not priced: its agent is started without one.
        *([
            "INSTANCE_TYPE=$(curl -fsS -H \"X-aws-ec2-metadata-token: $IMDS_TOKEN\" "
            "http://169.254.169.254/latest/meta-data/instance-type)",
            f"echo \"DDLC_INSTANCE_TYPE=$INSTANCE_TYPE\" >> {CLUSTER_ENV}",
        ] if boot.role == "worker" else []),
        # Monitoring first: metrics and boot logs are wanted even if a later step fails.
        f"if [ ! -x {CLOUDWATCH_AGENT_CTL} ]; then",
        f"  curl -fsSL -o /tmp/amazon-cloudwatch-agent.deb https://amazoncloudwatch-agent-{boot.region}.s3."
        f"{boot.region}.amazonaws.com/ubuntu/amd64/latest/amazon-cloudwatch-agent.deb",
        "  dpkg -i -E /tmp/amazon-cloudwatch-agent.deb",
        "fi",
        f"mkdir -p $(dirname {CLOUDWATCH_AGENT_CONFIG})",
        *_heredoc(CLOUDWATCH_AGENT_CONFIG, "CWAGENT", agent_config.splitlines()),
        *_heredoc(CLOUDWATCH_AGENT_PROMETHEUS, "CWPROM", prometheus_scrape_config(boot).splitlines()),
        f"{CLOUDWATCH_AGENT_CTL} -a fetch-config -m ec2 -c file:{CLOUDWATCH_AGENT_CONFIG} -s",
        # The AMI's PyTorch environment: conda env `pytorch` on older Deep Learning AMIs, /opt/pytorch on newer.
        # No fallback to another Python: ddlc needs the AMI's CUDA build of torch.
        "if [ -x /opt/conda/envs/pytorch/bin/python ]; then DDLC_PY=/opt/conda/envs/pytorch/bin/python",
        "elif [ -x /opt/pytorch/bin/python ]; then DDLC_PY=/opt/pytorch/bin/python",
        "else ddlc_fail 'no PyTorch environment (/opt/conda/envs/pytorch, /opt/pytorch): use a Deep Learning AMI'; fi",
        *_fail_if("! \"$DDLC_PY\" -c 'import torch' 2>/dev/null", "the AMI's PyTorch Python cannot import torch"),
        # ddlc from this stack's own package: pinned requirements, then the wheel with its extras, by path.
        f"PACKAGE_URL=$(aws ssm get-parameter --region {region} --name {shlex.quote(boot.package_parameter)} "
        "--query Parameter.Value --output text)",
        f"rm -rf {PACKAGE_DIR} && mkdir -p {PACKAGE_DIR}",
        f"aws s3 cp --region {region} --only-show-errors \"$PACKAGE_URL\" {PACKAGE_DIR}.zip",
        f"\"$DDLC_PY\" -m zipfile -e {PACKAGE_DIR}.zip {PACKAGE_DIR}",
        "PIP=(\"$DDLC_PY\" -m pip install --no-input --disable-pip-version-check --progress-bar off)",
        f"\"${{PIP[@]}}\" --no-deps -r {PACKAGE_DIR}/requirements.txt",
        f"WHEEL=$(\"$DDLC_PY\" -c 'import json; print(json.load(open(\"{PACKAGE_DIR}/manifest.json\"))[\"wheel\"])')",
        # --no-index: anything not already installed from the pins makes this fail instead of being fetched.
        f"\"${{PIP[@]}}\" --no-index -c {PACKAGE_DIR}/requirements.txt \"{PACKAGE_DIR}/$WHEEL[{extras}]\"",
        "DDLC_BIN=\"$(\"$DDLC_PY\" -c 'import sysconfig; print(sysconfig.get_path(\"scripts\"))')/ddlc\"",
        *_fail_if("[ ! -x \"$DDLC_BIN\" ]", "ddlc was installed but its command is missing"),
        "if [ \"$DDLC_BIN\" != /usr/local/bin/ddlc ]; then ln -sf \"$DDLC_BIN\" /usr/local/bin/ddlc; fi",
        *_fail_if("! /usr/local/bin/ddlc --help >/dev/null", "the ddlc command does not run"),
        *_fail_if("! \"$DDLC_PY\" -c 'import s3fs, boto3'", f"the ddlc extras [{extras}] do not import"),
        # Passwordless ssh between cluster members: keys derived from the cluster secret, trust limited to the VPC.
        "SSH_SEED=$(mktemp)",
        f"aws secretsmanager get-secret-value --region {region} --secret-id {shlex.quote(boot.ssh_secret_id)} "
        "--query SecretString --output text > \"$SSH_SEED\"",
        f"\"$DDLC_PY\" -m ddlc.infra.ssh_key install --seed-file \"$SSH_SEED\" --cidr {shlex.quote(boot.cluster_cidr)} "
        f"{users}",
        "rm -f \"$SSH_SEED\"",
        "systemctl reload ssh || systemctl restart ssh",
        *(render_slurm_boot(boot.role, boot.region, boot.munge_secret_id or "", CLUSTER_ENV)
          if boot.scheduler == "slurm" else []),
        # Peers are found by tag; retry until every worker is running, then keep it fresh every 5 minutes.
        *_heredoc(HOSTFILE_SCRIPT, "SCRIPT", [
            "#!/bin/bash",
            f"source {CLUSTER_ENV}",
            "for attempt in $(seq 1 90); do",
            '  if /usr/local/bin/ddlc cluster hosts --cluster "$DDLC_CLUSTER" --region "$AWS_DEFAULT_REGION" '
            f'--expect "$DDLC_NODE_COUNT" --output "$DDLC_HOSTFILE" > {MASTER_ENV}.new; then',
            f"    mv {MASTER_ENV}.new {MASTER_ENV}",
            *(targets_hook() if boot.runs_monitoring else []),
            *(hostfile_hook() if boot.scheduler == "slurm" else []),
            "    exit 0",
            "  fi",
            "  sleep 10",
            "done",
            "exit 1",
        ]),
        f"chmod 755 {HOSTFILE_SCRIPT}",
        *_heredoc("/etc/systemd/system/ddlc-hostfile.service", "UNIT", [
            "[Unit]",
            "Description=ddlc: write the cluster hostfile from EC2 tags",
            "After=network-online.target",
            "[Service]",
            "Type=oneshot",
            f"ExecStart={HOSTFILE_SCRIPT}",
        ]),
        *_heredoc("/etc/systemd/system/ddlc-hostfile.timer", "UNIT", [
            "[Unit]",
            "Description=ddlc: refresh the cluster hostfile",
            "[Timer]",
            "OnBootSec=1min",
            "OnUnitActiveSec=5min",
            "[Install]",
            "WantedBy=timers.target",
        ]),
        # Node metrics agent (Prometheus exposition on :9400, reachable only from cluster members).
        *_heredoc("/etc/systemd/system/ddlc-agent.service", "UNIT", [
            "[Unit]",
            "Description=ddlc node metrics agent",
            "After=network-online.target",
            "[Service]",
            f"EnvironmentFile={CLUSTER_ENV}",
            # All interfaces: the head node's Prometheus scrapes every node; the EFA security group admits only
            # cluster members, so the port is not reachable from anywhere else.
            # `ddlc health` every minute (ddlc_node_healthy); after 3 failed runs in a row a worker marks itself
            # Unhealthy in its Auto Scaling group, which replaces it (the head node is in no group: left alone).
            # --cloudwatch: the agent's own series (GPU, EFA, host) in namespace DDLC, which the network
            # dashboard's EFA panels read.
            f"ExecStart=/usr/local/bin/ddlc agent --host 0.0.0.0 --port {AGENT_PORT} --health-interval 60 "
            f"--replace-unhealthy --cloudwatch --region {boot.region}"
            # Slurm's queue and node states (ddlc.monitor.slurm): cluster-wide, so from the head only.
            + (" --slurm-metrics" if boot.scheduler == "slurm" and boot.role == "head" else ""),
            "Restart=always",
            "RestartSec=5",
            "StandardOutput=append:/var/log/ddlc/agent.log",
            "StandardError=append:/var/log/ddlc/agent.log",
            "[Install]",
            "WantedBy=multi-user.target",
        ]),
        "systemctl daemon-reload",
        "systemctl enable --now ddlc-agent.service ddlc-hostfile.timer",
        "systemctl start --no-block ddlc-hostfile.service",
        *(render_head_monitoring(boot.alert_topic_arn, boot.region, boot.prometheus_retention_gib, boot.grafana)
          if boot.runs_monitoring else []),
    ]
    if boot.lustre_dns_name and boot.lustre_mount_name:
        source = f"{boot.lustre_dns_name}@tcp:/{boot.lustre_mount_name}"
        mount_path = boot.lustre_mount_path
        lines += [
            # The FSx client comes from AWS's repository; the AMI may already have it.
            "install_lustre_client() {",
            "  . /etc/os-release &&",
            f"  curl -fsSL {FSX_KEY_URL} | gpg --batch --yes --dearmor -o /usr/share/keyrings/fsx-ubuntu-public-key.gpg &&",
            "  echo \"deb [signed-by=/usr/share/keyrings/fsx-ubuntu-public-key.gpg] "
            f"{FSX_REPO_URL} $VERSION_CODENAME main\" > /etc/apt/sources.list.d/fsxlustreclientrepo.list &&",
            "  apt-get update -q &&",
            "  DEBIAN_FRONTEND=noninteractive apt-get install -y -q \"lustre-client-modules-$(uname -r)\"",
            "}",
            "if ! command -v mount.lustre >/dev/null; then",
            "  install_lustre_client || ddlc_fail \"the FSx for Lustre client could not be installed "
            f"(lustre-client-modules-$(uname -r)); {mount_path} is not mounted\"",
            "fi",
            *_fail_if("! command -v mount.lustre >/dev/null",
                      f"no FSx for Lustre client (mount.lustre) after installing it; {mount_path} is not mounted"),
            f"mkdir -p {mount_path}",
            f"grep -q ' {mount_path} ' /etc/fstab || echo '{source} {mount_path} lustre "
            "defaults,noatime,flock,_netdev,x-systemd.automount 0 0' >> /etc/fstab",
            f"mount {mount_path} || ddlc_fail 'mounting {source} on {mount_path} failed'",
        ]
    lines += [
        f"echo \"ok $(date -u +%Y-%m-%dT%H:%M:%SZ)\" > {BOOT_STATUS}",
        "echo 'ddlc: node bootstrap finished'",
    ]
    return lines
