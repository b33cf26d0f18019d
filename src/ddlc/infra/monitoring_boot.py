"""The monitoring part of the head node's boot script: Prometheus, Alertmanager and (grafana: head) Grafana.

    user_data.render_user_data ──(role head)──> these lines, after ddlc, the hostfile timer and the agent:
      apt-get install prometheus prometheus-alertmanager    the AMI's Ubuntu archive (22.04: Prometheus 2.31,
                                                            Alertmanager 0.23, the first with sns_configs)
      (grafana: head) Grafana's signed APT repository, grafana=GRAFANA_VERSION
      the packaged prometheus/prometheus-alertmanager units: disabled (same ports, the package's config)
      ddlc monitor head-setup   configs, rules, file_sd targets, units (ddlc.monitor.head_config, head_units)
      systemctl enable + restart ddlc-prometheus ddlc-alertmanager [grafana-server]: a rerun picks up new configs
    the hostfile timer, after each hostfile: `ddlc monitor targets` (file_sd: a replaced worker is scraped
    without restarting Prometheus).

Everything listens on 127.0.0.1 (reached through SSM port forwarding); Prometheus reaches the agents (9400) and
ranks (9500+) through the cluster security group's member-to-member rule. Alertmanager publishes to the alert
topic with the node role (sns:Publish on that topic, and its KMS key: ddlc.infra.node_role).
"""

from __future__ import annotations

import shlex

from ddlc.monitor.head_units import ALERTMANAGER_UNIT, GRAFANA_UNIT, PROMETHEUS_UNIT

GRAFANA_VERSION = "11.3.0"
GRAFANA_KEY_URL = "https://apt.grafana.com/gpg.key"
GRAFANA_REPO_URL = "https://apt.grafana.com"
GRAFANA_KEYRING = "/usr/share/keyrings/grafana.gpg"


def render_head_monitoring(topic_arn: str, region: str, retention_gib: int, grafana: bool) -> list[str]:
    packages = "prometheus prometheus-alertmanager" + (f" grafana={GRAFANA_VERSION}" if grafana else "")
    units = " ".join([PROMETHEUS_UNIT, ALERTMANAGER_UNIT] + ([GRAFANA_UNIT] if grafana else []))
    lines = ["MON_APT=(apt-get -q -y -o DPkg::Lock::Timeout=600 --no-install-recommends)"]
    if grafana:
        lines += [
            f"{{ curl -fsSL {GRAFANA_KEY_URL} | gpg --batch --yes --dearmor -o {GRAFANA_KEYRING}; }} "
            "|| ddlc_fail \"Grafana's APT key could not be fetched\"",
            f"echo 'deb [signed-by={GRAFANA_KEYRING}] {GRAFANA_REPO_URL} stable main' "
            "> /etc/apt/sources.list.d/grafana.list",
        ]
    lines += [
        f"\"${{MON_APT[@]}}\" update && \"${{MON_APT[@]}}\" install {packages} "
        f"|| ddlc_fail 'installing {packages} failed'",
        "systemctl disable --now prometheus.service prometheus-alertmanager.service",
        f"/usr/local/bin/ddlc monitor head-setup --sns-topic-arn {shlex.quote(topic_arn)} "
        f"--region {shlex.quote(region)} --retention-size {retention_gib}GB" + (" --grafana" if grafana else "")
        + " || ddlc_fail 'ddlc monitor head-setup failed (above)'",
        "systemctl daemon-reload",
        f"systemctl enable {units}",
        f"systemctl restart {units}",
    ]
    return lines


def targets_hook() -> list[str]:
    """Lines of the hostfile script, after the hostfile is written: Prometheus's file_sd targets (head node)."""
    return ['    /usr/local/bin/ddlc monitor targets --hostfile "$DDLC_HOSTFILE" || exit 1']
