"""Writing a prometheus.yml that scrapes every node of a hostfile: its agent and its training ranks.

Hostfile lines are DeepSpeed/MPI style `host slots=N` (N ranks on that host) or a bare `host` (one rank);
`#` starts a comment. Rank i of a host serves on train_port + i (see `ddlc.monitor.training`).

One `node` identity: the agent and the ranks label their samples with the node's hostname, so targets get no
`node` label of their own (a hostfile holds IPs on the cluster, and a second meaning of `node` breaks joins).
`up` names the target by `instance`; the agent-down alert finds the hostname through `ddlc_agent_info`.
Alerts go to the Alertmanager(s) in the `alerting:` block (default localhost:9093, the head node's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from ddlc.errors import UserError
from ddlc.monitor.agent import DEFAULT_AGENT_PORT
from ddlc.monitor.training import DEFAULT_TRAIN_METRICS_PORT

AGENT_JOB = "ddlc-agent"
TRAIN_JOB = "ddlc-train"
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")
DEFAULT_ALERTMANAGER = "localhost:9093"


def duration_seconds(text: str) -> float:
    """Seconds of a duration that matches _DURATION (e.g. 1h30m). Prometheus and Alertmanager refuse one past
    2^63 ns ("duration out of range"), and read 0 as their default: callers bound it."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(number) * units[unit] for number, unit in re.findall(r"([0-9]+)(ms|s|m|h)", text))


@dataclass(frozen=True)
class HostEntry:
    host: str
    slots: int = 1


def parse_hostfile(path: Path | str) -> list[HostEntry]:
    from ddlc.launch.hostfile import hostfile_text, read_hostfile_bytes  # one check for odd hostfiles

    path = Path(path)
    try:
        lines = hostfile_text(read_hostfile_bytes(path), str(path)).splitlines()
    except OSError as error:
        raise UserError(f"hostfile {path} cannot be read: {error.strerror or error}") from error
    entries: list[HostEntry] = []
    seen: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"hostfile {path} line {number}"
        host, options = fields[0], fields[1:]
        if not _HOST.fullmatch(host):
            raise UserError(f"{where}: {host!r} is not a host name or IPv4 address")
        if host in seen:
            raise UserError(f"{where}: host {host} is listed twice")
        slots = 1
        for option in options:
            key, _, value = option.partition("=")
            if key not in ("slots", "max_slots") or not value.isdigit() or int(value) < 1:
                raise UserError(f"{where}: expected `slots=N` with N >= 1, got {option!r}")
            if key == "slots":
                slots = int(value)
        seen.add(host)
        entries.append(HostEntry(host, slots))
    if not entries:
        raise UserError(f"hostfile {path} lists no hosts")
    return entries


def build_prometheus_config(
    hosts: Sequence[HostEntry],
    agent_port: int = DEFAULT_AGENT_PORT,
    train_port: int | None = DEFAULT_TRAIN_METRICS_PORT,
    scrape_interval: str = "15s",
    rule_files: Sequence[str] = (),
    alertmanagers: Sequence[str] = (DEFAULT_ALERTMANAGER,),
) -> dict[str, Any]:
    """The prometheus.yml document. train_port=None leaves the training ranks out; alertmanagers=() leaves the
    `alerting:` block out (rules are evaluated, but nothing is notified)."""
    if not _DURATION.fullmatch(scrape_interval) or not 0 < duration_seconds(scrape_interval) <= 3600:
        raise UserError(f"scrape interval {scrape_interval!r} is not a Prometheus duration such as 15s or 1m "
                        "(above 0, at most 1h)")
    for name, port in (("agent port", agent_port), ("training port", train_port)):
        if port is not None and not 1 <= port <= 65535:
            raise UserError(f"{name} {port} is outside 1-65535")
    for target in alertmanagers:
        host, _, port = target.rpartition(":")
        if not _HOST.fullmatch(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise UserError(f"alertmanager {target!r} is not host:port")
    # No `node` target label: the samples carry the node's hostname (see the module docstring).
    agent_targets = [{"targets": [f"{h.host}:{agent_port}"]} for h in hosts]
    scrape_configs: list[dict[str, Any]] = [
        {"job_name": AGENT_JOB, "honor_labels": True, "static_configs": agent_targets}
    ]
    if train_port is not None:
        last_port = train_port + max(h.slots for h in hosts) - 1
        if last_port > 65535:
            raise UserError(f"training port {train_port} + slots runs past 65535")
        train_targets = [{"targets": [f"{h.host}:{train_port + rank}" for rank in range(h.slots)]} for h in hosts]
        scrape_configs.append({"job_name": TRAIN_JOB, "honor_labels": True, "static_configs": train_targets})
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    if rule_files:
        config["rule_files"] = list(rule_files)
    config["scrape_configs"] = scrape_configs
    return config


def render_prometheus_config(config: dict[str, Any]) -> str:
    header = "# Generated by `ddlc monitor prometheus-config`; regenerate instead of editing.\n"
    return header + yaml.safe_dump(config, sort_keys=False)
