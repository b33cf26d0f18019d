"""systemd units of the head node's Prometheus and Alertmanager, and Grafana's provisioning (`grafana: head`).

    ddlc monitor head-setup ──> <units>/ddlc-prometheus.service    /usr/bin/prometheus on 127.0.0.1:9090
                                <units>/ddlc-alertmanager.service  /usr/bin/prometheus-alertmanager on 127.0.0.1:9093
                           (--grafana) <dir>/grafana/dashboards/*.json + <provisioning>/{datasources,dashboards}/ddlc.yaml
                                <units>/grafana-server.service.d/ddlc.conf  127.0.0.1:3000, anonymous viewers,
                                                                            a random admin password (0600 env file)

Every listener is on 127.0.0.1: operators reach them through SSM port forwarding (docs/infrastructure.md),
never through a security group. The binaries are the OS archive's (Debian/Ubuntu package names); the units are
ddlc's own so the packaged ones (same ports, the package's config) are disabled by the boot.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from ddlc.errors import UserError
from ddlc.monitor.head_config import ALERTMANAGER_PORT, GRAFANA_PORT, PROMETHEUS_PORT
from ddlc.run_format import write_atomic

MONITORING_DIR = "/etc/ddlc/monitoring"
UNITS_DIR = "/etc/systemd/system"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
PROMETHEUS_BIN = "/usr/bin/prometheus"
ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"  # the Debian/Ubuntu package's name for it
PROMETHEUS_UNIT = "ddlc-prometheus.service"
ALERTMANAGER_UNIT = "ddlc-alertmanager.service"
GRAFANA_UNIT = "grafana-server.service"
# At most 6 digits: Prometheus refuses to start on a size past 2^63 bytes ("units: overflow parsing unit").
_SIZE = re.compile(r"^[1-9][0-9]{0,5}(MB|GB|TB)$")
# Goes into ExecStart= unquoted: systemd splits at spaces and expands `%`, `$` and `\`, so only plain paths.
_UNIT_PATH = re.compile(r"(/[A-Za-z0-9._+-]+)+/?")


def _check_directory(directory: str) -> None:
    if not _UNIT_PATH.fullmatch(directory):
        raise UserError(f"monitoring directory {directory!r} must be an absolute path of letters, digits and "
                        "._+- (it goes into the systemd units' command lines)")


def _unit(description: str, exec_start: str, state: str) -> str:
    return "\n".join([
        "[Unit]",
        f"Description={description}",
        "Wants=network-online.target",
        "After=network-online.target",
        "[Service]",
        "User=prometheus",  # the OS package's account
        f"ExecStart={exec_start}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"StateDirectory={state}",  # /var/lib/<state>, owned by User=, kept across restarts and reboots
        "Restart=on-failure",
        "RestartSec=5",
        "[Install]",
        "WantedBy=multi-user.target",
    ]) + "\n"


def prometheus_unit(directory: str = MONITORING_DIR, retention_size: str = "50GB") -> str:
    """Retention by size (sized to the head's disk by the stack), so a busy cluster never fills the root volume."""
    if not _SIZE.fullmatch(retention_size):
        raise UserError(f"retention size {retention_size!r} is not a size such as 50GB")
    _check_directory(directory)
    return _unit("ddlc: Prometheus (every node's agent and training ranks; alerts to Alertmanager)",
                 f"{PROMETHEUS_BIN} --config.file={directory}/prometheus.yml "
                 "--storage.tsdb.path=/var/lib/ddlc-prometheus "
                 f"--storage.tsdb.retention.size={retention_size} --web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
                 "ddlc-prometheus")


def alertmanager_unit(directory: str = MONITORING_DIR) -> str:
    _check_directory(directory)
    # --cluster.listen-address= : one Alertmanager, no gossip port (9094) to open.
    return _unit("ddlc: Alertmanager (alerts to the cluster's SNS topic)",
                 f"{ALERTMANAGER_BIN} --config.file={directory}/alertmanager.yml "
                 f"--storage.path=/var/lib/ddlc-alertmanager --web.listen-address=127.0.0.1:{ALERTMANAGER_PORT} "
                 "--cluster.listen-address=",
                 "ddlc-alertmanager")


def unit_paths(units_dir: Path | str = UNITS_DIR) -> list[Path]:
    return [Path(units_dir) / PROMETHEUS_UNIT, Path(units_dir) / ALERTMANAGER_UNIT]


def grafana_paths(directory: Path | str = MONITORING_DIR, units_dir: Path | str = UNITS_DIR,
                  provisioning: Path | str = GRAFANA_PROVISIONING) -> list[Path]:
    """The files write_grafana replaces outside the exported dashboards' own directory."""
    return [Path(provisioning) / kind / "ddlc.yaml" for kind in ("datasources", "dashboards")] + [
        Path(directory) / "grafana.env", Path(units_dir) / f"{GRAFANA_UNIT}.d" / "ddlc.conf"]


def write_units(units_dir: Path | str = UNITS_DIR, directory: str = MONITORING_DIR,
                retention_size: str = "50GB") -> list[Path]:
    units_dir = Path(units_dir)
    written = []
    try:
        units_dir.mkdir(parents=True, exist_ok=True)
        for name, text in ((PROMETHEUS_UNIT, prometheus_unit(directory, retention_size)),
                           (ALERTMANAGER_UNIT, alertmanager_unit(directory))):
            write_atomic(units_dir / name, text)
            written.append(units_dir / name)
    except OSError as error:
        raise UserError(f"units directory {units_dir}: {error.strerror or error}") from None
    return written


def write_grafana(directory: Path | str = MONITORING_DIR, units_dir: Path | str = UNITS_DIR,
                  provisioning: Path | str = GRAFANA_PROVISIONING) -> list[Path]:
    """The exported dashboards and the Prometheus data source, provisioned; Grafana on 127.0.0.1 only."""
    from ddlc.dashboards.grafana import export_grafana

    grafana_dir = Path(directory) / "grafana"
    try:
        written = export_grafana(grafana_dir, prometheus_url=f"http://127.0.0.1:{PROMETHEUS_PORT}",
                                 dashboards_path=str(grafana_dir / "dashboards"))
        for kind in ("datasources", "dashboards"):  # into Grafana's own provisioning directory
            source = next(grafana_dir.glob(f"provisioning/{kind}/*.yaml"))
            target = Path(provisioning) / kind / "ddlc.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, source.read_text())
            written.append(target)
        # Made once: the admin password only takes effect when Grafana creates its database.
        env_file = Path(directory) / "grafana.env"
        if not env_file.exists():
            write_atomic(env_file, f"GF_SECURITY_ADMIN_PASSWORD={secrets.token_urlsafe(24)}\n", mode=0o600)
        dropin = Path(units_dir) / f"{GRAFANA_UNIT}.d" / "ddlc.conf"
        dropin.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dropin, "\n".join([
            "[Service]",
            f"EnvironmentFile={env_file}",  # read by systemd as root: the file stays 0600
            f"Environment=GF_SERVER_HTTP_ADDR=127.0.0.1 GF_SERVER_HTTP_PORT={GRAFANA_PORT}",
            "Environment=GF_AUTH_ANONYMOUS_ENABLED=true GF_AUTH_ANONYMOUS_ORG_ROLE=Viewer",
            "Restart=on-failure",
            "RestartSec=5",
        ]) + "\n")
        written += [env_file, dropin]
    except OSError as error:
        raise UserError(f"Grafana files under {directory}: {error.strerror or error}") from None
    return written
