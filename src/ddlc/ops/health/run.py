"""Wires readings to checks: what this node is expected to have, then every check in a fixed order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

from ddlc.ops.cluster_env import CLUSTER_ENV_FILE, node_environment
from ddlc.ops.health.gpu import check_ecc, check_gpu_count, check_row_remap, check_xid
from ddlc.ops.health.model import HealthOptions, HealthResult
from ddlc.ops.health.node import check_clock, check_disk, check_efa
from ddlc.ops.health.readings import KMSG, NodeReadings, collect


def expectations(readings: NodeReadings, options: HealthOptions) -> tuple[Optional[int], int, bool]:
    """(GPUs, EFA devices, NTP required): the options, else the cluster's DDLC_* settings, else the instance type."""
    from ddlc.infra.instance_types import GPU_INSTANCE_TYPES

    env = readings.environment
    spec = GPU_INSTANCE_TYPES.get(readings.instance_type or "")
    gpus = options.expect_gpus
    if gpus is None and env.get("DDLC_ROLE") == "worker" and env.get("DDLC_GPUS_PER_NODE", "").isdigit():
        gpus = int(env["DDLC_GPUS_PER_NODE"])
    if gpus is None and spec is not None:
        gpus = spec.gpus
    efa = options.expect_efa if options.expect_efa is not None else (spec.efa_interfaces if spec else 0)
    ntp = options.require_ntp if options.require_ntp is not None else bool(env.get("DDLC_ROLE"))
    return gpus, efa, ntp


def run_checks(readings: NodeReadings, options: HealthOptions) -> list[HealthResult]:
    gpus, efa, ntp = expectations(readings, options)
    return [
        check_gpu_count(readings, gpus),
        check_xid(readings),
        check_ecc(readings),
        check_row_remap(readings),
        check_efa(readings, efa),
        check_disk(readings, options.min_free_gb),
        check_clock(readings, options, ntp),
    ]


def run_health(options: HealthOptions, nvml: Any = None, sys_root: Path = Path("/sys"), kmsg: Path = KMSG,
               environ: Optional[Mapping[str, str]] = None, cluster_env_file: Path = CLUSTER_ENV_FILE,
               ) -> tuple[NodeReadings, list[HealthResult]]:
    """Read this node and check it."""
    env = node_environment(os.environ if environ is None else environ, cluster_env_file)
    readings = collect(nvml, sys_root, kmsg, options.disk_path, env)
    return readings, run_checks(readings, options)
