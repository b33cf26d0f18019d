"""The Prometheus alert rules shipped with ddlc (`rules/ddlc-alerts.yml`, documented in docs/metrics.md)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

RULES_FILE_NAME = "ddlc-alerts.yml"


def rules_text() -> str:
    return resources.files("ddlc.monitor").joinpath("rules", RULES_FILE_NAME).read_text()


def write_rules(destination: Path | str) -> Path:
    """Write the rules file to `destination` (a file path, or a directory to put ddlc-alerts.yml in)."""
    destination = Path(destination)
    if destination.is_dir():
        destination = destination / RULES_FILE_NAME
    destination.write_text(rules_text())
    return destination
