"""What a cluster node was told at boot: /etc/ddlc/cluster.env (written by the user data), overlaid by the
process environment. Shared by `ddlc doctor` and `ddlc health`, which both need e.g. DDLC_GPUS_PER_NODE."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

CLUSTER_ENV_FILE = Path("/etc/ddlc/cluster.env")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (the /etc/ddlc/cluster.env the cluster's boot script writes); {} when absent."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key.strip()] = value.strip().strip("'\"")
    return values


def node_environment(environ: Mapping[str, str], cluster_env_file: Optional[Path] = None) -> dict[str, str]:
    """The cluster's boot-time settings overlaid by the process environment (which wins)."""
    return {**read_env_file(CLUSTER_ENV_FILE if cluster_env_file is None else cluster_env_file), **environ}
