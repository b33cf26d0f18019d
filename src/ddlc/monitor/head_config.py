"""The head node's own monitoring: Prometheus (scraping every node, alerting) and Alertmanager (routing to SNS).

    boot (head) ── ddlc monitor head-setup ──> write_head_monitoring(directory, receiver, ...)
        <dir>/prometheus.yml      global, alerting -> 127.0.0.1:<alertmanager port>, rule_files, scrape_configs:
                                    ddlc-agent: the head's own agent (static) + file_sd <dir>/targets/ddlc-agent.json
                                    ddlc-train: file_sd <dir>/targets/ddlc-train.json
        <dir>/rules/ddlc-alerts.yml  the shipped rules (ddlc.monitor.alert_rules)
        <dir>/alertmanager.yml    one route to one receiver: SNS (the stack's alert topic, signed with the instance
                                    role) on the cluster, a webhook in tests
        <dir>/targets/*.json      from the hostfile (write_targets), if there is one yet; else empty lists where
                                    none exist (a rerun keeps the timer's targets)
    hostfile timer (head) ── ddlc monitor targets ──> write_targets(hostfile, <dir>/targets)
        Prometheus re-reads file_sd files when they change: a replaced worker is scraped without a restart.

The targets are the ones `ddlc monitor prometheus-config` would write for the same hostfile (same code:
ddlc.monitor.prometheus_config), only in file_sd files instead of static_configs.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union
from urllib.parse import urlsplit

import yaml

from ddlc.errors import UserError
from ddlc.monitor.agent import DEFAULT_AGENT_PORT
from ddlc.monitor.alert_rules import RULES_FILE_NAME, rules_text
from ddlc.monitor.prometheus_config import (
    AGENT_JOB, TRAIN_JOB, HostEntry, build_prometheus_config, duration_seconds, parse_hostfile,
)
from ddlc.monitor.training import DEFAULT_TRAIN_METRICS_PORT
from ddlc.run_format import write_atomic

PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
GRAFANA_PORT = 3000
TARGETS_DIR = "targets"
_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")


@dataclass(frozen=True)
class SnsReceiver:
    """The stack's alert topic; requests signed (SigV4) with the instance role's credentials."""

    topic_arn: str
    region: str

    def __post_init__(self) -> None:
        if not _TOPIC_ARN.fullmatch(self.topic_arn):
            raise UserError(f"SNS topic {self.topic_arn!r} is not an SNS topic ARN")
        if not _REGION.fullmatch(self.region):
            raise UserError(f"region {self.region!r} is not an AWS region")
        # Alertmanager signs for and calls SNS in `region`: another region than the topic's fails every publish.
        if self.topic_arn.split(":")[3] != self.region:
            raise UserError(f"region {self.region!r} is not the SNS topic's region ({self.topic_arn.split(':')[3]})")

    def config(self) -> dict[str, Any]:
        return {"sns_configs": [{
            "topic_arn": self.topic_arn,
            "sigv4": {"region": self.region},  # no keys: the AWS default chain (instance role through IMDS)
            # SNS subjects are at most 100 ASCII characters on one line; the default one lists every label.
            "subject": '[{{ .Status | toUpper }}] {{ .GroupLabels.alertname }}',
            "send_resolved": True,
        }]}


@dataclass(frozen=True)
class WebhookReceiver:
    """Any HTTP endpoint taking Alertmanager's webhook JSON (a chat bridge, a pager, a test's server)."""

    url: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", self.url):
            raise UserError(f"webhook URL {self.url!r} is not an http(s) URL")
        # What Alertmanager's URL parser rejects would stop it from starting, and with it every alert.
        try:
            port = urlsplit(self.url).port
        except ValueError:
            port = 0
        if port == 0 or not urlsplit(self.url).hostname or re.search(r"%(?![0-9A-Fa-f]{2})", self.url):
            raise UserError(f"webhook URL {self.url!r} is not an http(s) URL (host, port 1-65535, %XX escapes)")

    def config(self) -> dict[str, Any]:
        return {"webhook_configs": [{"url": self.url, "send_resolved": True}]}


Receiver = Union[SnsReceiver, WebhookReceiver]


def build_alertmanager_config(receiver: Receiver, group_wait: str = "30s", group_interval: str = "5m",
                              repeat_interval: str = "4h") -> dict[str, Any]:
    """One route, grouped by alert and cluster object, to one receiver."""
    for name, value in (("group_wait", group_wait), ("group_interval", group_interval),
                        ("repeat_interval", repeat_interval)):
        if not re.fullmatch(r"([0-9]+(ms|s|m|h))+", value) or duration_seconds(value) > 366 * 86400:
            raise UserError(f"{name} {value!r} is not a duration such as 30s or 5m (at most a year)")
    return {
        "route": {
            "receiver": "ddlc", "group_by": ["alertname", "run", "node"],
            "group_wait": group_wait, "group_interval": group_interval, "repeat_interval": repeat_interval,
        },
        "receivers": [{"name": "ddlc", **receiver.config()}],
    }


def target_groups(hosts: list[HostEntry], agent_port: int = DEFAULT_AGENT_PORT,
                  train_port: int = DEFAULT_TRAIN_METRICS_PORT) -> dict[str, list[dict[str, Any]]]:
    """{job: file_sd target groups}: what `ddlc monitor prometheus-config` puts in static_configs."""
    config = build_prometheus_config(hosts, agent_port=agent_port, train_port=train_port, alertmanagers=())
    return {scrape["job_name"]: scrape["static_configs"] for scrape in config["scrape_configs"]}


def check_destinations(paths: Iterable[Path | str]) -> None:
    """Before the first file is replaced: no destination is a directory, and each one's nearest existing parent is
    a writable directory, so a rerun does not stop halfway with some configs new and some old."""
    for path in map(Path, paths):
        try:
            if path.is_dir():
                raise UserError(f"{path} is a directory; ddlc monitor writes a file there")
            parent = next(p for p in path.parents if p.exists() or p.is_symlink())
            writable = os.access(parent, os.W_OK | os.X_OK)
        except OSError as error:  # a parent this user may not even look into
            raise UserError(f"{path}: {error.strerror or error}") from None
        if not parent.is_dir():
            raise UserError(f"{parent} is not a directory; ddlc monitor writes {path} under it")
        if not writable:
            raise UserError(f"{parent} is not writable; ddlc monitor writes {path} under it")


def monitoring_paths(directory: Path | str) -> list[Path]:
    """Every file write_head_monitoring replaces."""
    directory = Path(directory)
    return [directory / "rules" / RULES_FILE_NAME, directory / "prometheus.yml", directory / "alertmanager.yml",
            *(directory / TARGETS_DIR / f"{job}.json" for job in (AGENT_JOB, TRAIN_JOB))]


def write_targets(directory: Path | str, hostfile: Optional[Path | str], agent_port: int = DEFAULT_AGENT_PORT,
                  train_port: int = DEFAULT_TRAIN_METRICS_PORT) -> dict[str, Path]:
    """The file_sd files of both jobs, each replaced atomically (Prometheus never reads half of one). No hostfile
    (None): empty lists, so Prometheus starts cleanly before discovery has run."""
    return _write_groups(directory, target_groups(parse_hostfile(hostfile), agent_port, train_port) if hostfile else {})


def _write_groups(directory: Path | str, groups: dict[str, list[dict[str, Any]]],
                  keep_existing: bool = False) -> dict[str, Path]:
    directory = Path(directory)
    check_destinations(directory / f"{job}.json" for job in (AGENT_JOB, TRAIN_JOB))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = {}
        for job in (AGENT_JOB, TRAIN_JOB):
            path = directory / f"{job}.json"
            if keep_existing and path.exists():
                continue
            write_atomic(path, json.dumps(groups.get(job, []), indent=1) + "\n")
            written[job] = path
    except OSError as error:
        raise UserError(f"targets directory {directory}: {error.strerror or error}") from None
    return written


def build_head_prometheus_config(directory: Path | str, agent_port: int = DEFAULT_AGENT_PORT,
                                 scrape_interval: str = "15s", alertmanager_port: int = ALERTMANAGER_PORT,
                                 local_agent: Optional[str] = None) -> dict[str, Any]:
    """prometheus.yml of the head: the shipped rules, the local Alertmanager, file_sd targets under `directory`.
    `local_agent`: host:port of the head's own agent (not in the hostfile, which lists the workers)."""
    directory = Path(directory)
    config = build_prometheus_config(
        [HostEntry("localhost")], agent_port=agent_port, train_port=None, scrape_interval=scrape_interval,
        rule_files=[str(directory / "rules" / RULES_FILE_NAME)], alertmanagers=[f"127.0.0.1:{alertmanager_port}"],
    )
    targets = directory / TARGETS_DIR
    agent_scrape: dict[str, Any] = {"job_name": AGENT_JOB, "honor_labels": True,
                                    "file_sd_configs": [{"files": [str(targets / f"{AGENT_JOB}.json")]}]}
    if local_agent:
        agent_scrape["static_configs"] = [{"targets": [local_agent]}]
    config["scrape_configs"] = [
        agent_scrape,
        {"job_name": TRAIN_JOB, "honor_labels": True,
         "file_sd_configs": [{"files": [str(targets / f"{TRAIN_JOB}.json")]}]},
    ]
    return config


def _readable_by_the_service_only(path: Path) -> None:
    """A webhook URL often carries its token in the path (chat bridges, pagers): not for every local user to read.
    0640 with the group of the account the units run as (`prometheus`, the OS package's), else 0600."""
    import grp

    try:
        gid = grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return  # no such account here: the owner alone reads it (0600)
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        return  # not root and not in that group: 0600 stays
    os.chmod(path, 0o640)


SERVICE_GROUP = "prometheus"  # head_units: User=prometheus


def write_head_monitoring(directory: Path | str, receiver: Receiver, hostfile: Optional[Path | str] = None,
                          agent_port: int = DEFAULT_AGENT_PORT, train_port: int = DEFAULT_TRAIN_METRICS_PORT,
                          scrape_interval: str = "15s", alertmanager_port: int = ALERTMANAGER_PORT,
                          local_agent: Optional[str] = f"localhost:{DEFAULT_AGENT_PORT}",
                          group_wait: str = "30s", group_interval: str = "5m",
                          repeat_interval: str = "4h") -> dict[str, Path]:
    """Write every file the head's Prometheus and Alertmanager read (see the module docstring); idempotent.
    Returns {"prometheus": ..., "alertmanager": ..., "rules": ..., job: targets file}."""
    directory = Path(directory)
    prometheus = build_head_prometheus_config(directory, agent_port, scrape_interval, alertmanager_port, local_agent)
    alertmanager = build_alertmanager_config(receiver, group_wait, group_interval, repeat_interval)
    # Everything is checked (the hostfile parsed) before the first file is replaced. No hostfile yet: discovery
    # has not run, the hostfile timer writes the targets when it does.
    has_hostfile = hostfile is not None and Path(hostfile).exists()
    groups = target_groups(parse_hostfile(hostfile), agent_port, train_port) if has_hostfile else {}
    header = "# Written by `ddlc monitor head-setup`; rerun it instead of editing.\n"
    check_destinations(monitoring_paths(directory))
    try:
        (directory / "rules").mkdir(parents=True, exist_ok=True)
        paths = {"prometheus": directory / "prometheus.yml", "alertmanager": directory / "alertmanager.yml",
                 "rules": directory / "rules" / RULES_FILE_NAME}
        write_atomic(paths["rules"], rules_text())
        write_atomic(paths["prometheus"], header + yaml.safe_dump(prometheus, sort_keys=False))
        write_atomic(paths["alertmanager"], header + yaml.safe_dump(alertmanager, sort_keys=False),
                     mode=0o600)
        _readable_by_the_service_only(paths["alertmanager"])
    except OSError as error:
        raise UserError(f"monitoring directory {directory}: {error.strerror or error}") from None
    # No hostfile: targets the hostfile timer already wrote stay (a rerun by hand must not stop the scrapes).
    paths.update(_write_groups(directory / TARGETS_DIR, groups, keep_existing=not has_hostfile))
    return paths
