"""`ddlc doctor`: preflight checks for a node before a training job.

Each check is a small function that returns a `CheckResult`; its inputs (environment mapping, /proc and /sys
roots, limits, hostfile, checkpoint URI, how other hosts are reached) are arguments, so every check can be run
against a prepared tree in tests and against the real machine in production. `run_checks` wires them together.

Statuses: PASS, WARN (works, but slower or fragile), FAIL (the job will fail or hang: exit code 1), SKIP (the
input the check needs was not given, e.g. no hostfile). Every non-PASS result carries a one-line fix and an
anchor into docs/troubleshooting.md. No check waits without a timeout.

Modules, one per check family (function names are stable: `ddlc health` and others reuse them):

    results.py  Status, CheckResult, report          node.py     facts read from /proc, /sys, torch, cluster.env
    gpu.py      GPUs, driver/CUDA, NCCL in torch,    efa.py      EFA, aws-ofi-nccl (found and loaded by NCCL),
                nvidia-fabricmanager on NVSwitch                NCCL_*/FI_*, memlock, huge pages
    storage.py  disk, checkpoint write access, the   hosts.py    master port; clocks/versions across a hostfile
                checkpoint location shared by every host
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from ddlc.ops.boot_status import ANCHOR_BOOT, BOOT_STATUS_FILE, check_boot, read_boot_status  # noqa: F401
from ddlc.ops.doctor.efa import *  # noqa: F401,F403 - the check functions, under their stable names
from ddlc.ops.doctor.efa import (FI_INFO_DIRS, OFI_NCCL_DIRS, _interface_matches, check_efa, check_hugepages,  # noqa: F401
                                 check_memlock, check_nccl_env, check_nccl_net_plugin, check_ofi_nccl, find_fi_info,
                                 find_ofi_nccl_plugin, nccl_network, run_fi_info, run_nccl_probe)
from ddlc.ops.doctor.gpu import *  # noqa: F401,F403
from ddlc.ops.doctor.gpu import (FABRIC_MANAGER, _version_tuple, check_driver_cuda, check_fabricmanager,  # noqa: F401
                                 check_gpus, check_nccl, nvswitch_present, process_running)
from ddlc.ops.doctor.hosts import *  # noqa: F401,F403
from ddlc.ops.doctor.hosts import (CLOCK_SNIPPET, FACTS_SNIPPET, HostFacts, HostRunner, SshRunner,  # noqa: F401
                                   check_clock_skew, check_master_port, check_versions, gather_hosts, local_versions)
from ddlc.ops.doctor.node import *  # noqa: F401,F403
from ddlc.ops.doctor.node import (CLUSTER_ENV_FILE, TorchFacts, _gpu_expectation, _read_int, _read_text,  # noqa: F401
                                  memlock_limit, node_environment, read_driver_version, read_nvidia_gpus,
                                  read_rdma_devices)
from ddlc.ops.doctor.results import *  # noqa: F401,F403
from ddlc.ops.doctor.results import (DEFAULT_MASTER_PORT, DEFAULT_MIN_FREE_GB, NETWORK_TIMEOUT_S, CheckResult,  # noqa: F401
                                     Status, report, worst)
from ddlc.ops.doctor.storage import *  # noqa: F401,F403
from ddlc.ops.doctor.storage import (_one_line, _run_with_deadline, check_checkpoint_write, check_disk,  # noqa: F401
                                     check_shared_checkpoint, local_checkpoint_path)


@dataclass
class DoctorOptions:
    """Everything `ddlc doctor` reads, with production defaults; tests point these at prepared trees."""

    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    cluster_env_file: Path = CLUSTER_ENV_FILE
    boot_status_file: Path = BOOT_STATUS_FILE
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    torch: Optional[TorchFacts] = None  # None: ask the installed torch
    memlock_bytes: Optional[int] = -1  # -1: read this process's limit; None: unlimited
    interfaces: Optional[Sequence[str]] = None  # None: psutil
    checkpoint_uri: Optional[str] = None
    endpoint_url: Optional[str] = None
    run_dir: Path = Path("runs")
    min_free_gb: float = DEFAULT_MIN_FREE_GB
    hostfile: Optional[Path] = None
    master_port: Optional[int] = None
    expect_gpus: Optional[int] = None
    expect_efa: bool = False
    runner: Optional[HostRunner] = None
    remote_python: str = sys.executable
    network_timeout_s: float = NETWORK_TIMEOUT_S
    fi_info_runner: Callable[[str], tuple[bool, str]] = run_fi_info
    dev_root: Path = Path("/dev")
    instance_type: Optional[str] = None  # None: DDLC_INSTANCE_TYPE
    nccl_probe: Optional[Callable[[], tuple[int, str]]] = None  # None: run_nccl_probe in this environment


def resolve_inputs(options: DoctorOptions) -> tuple[dict[str, str], Optional[str], Optional[Path], int]:
    """(environment, checkpoint URI, hostfile, master port) after cluster defaults are applied."""
    env = node_environment(options.environ, options.cluster_env_file)
    uri = options.checkpoint_uri
    if uri is None and env.get("DDLC_CHECKPOINT_BUCKET"):
        uri = f"s3://{env['DDLC_CHECKPOINT_BUCKET']}/checkpoints"
    hostfile = options.hostfile
    if hostfile is None and env.get("DDLC_HOSTFILE") and Path(env["DDLC_HOSTFILE"]).is_file():
        hostfile = Path(env["DDLC_HOSTFILE"])
    port = options.master_port
    if port is None:
        port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT", "").isdigit() else DEFAULT_MASTER_PORT
    return env, uri, hostfile, port


def run_checks(options: DoctorOptions) -> list[CheckResult]:
    env, uri, hostfile, port = resolve_inputs(options)
    torch = options.torch or TorchFacts.from_torch()
    gpus = read_nvidia_gpus(options.proc_root)
    expected = _gpu_expectation(env, options.expect_gpus)
    devices = read_rdma_devices(options.sys_root)
    efa_present = any(d.is_efa for d in devices)
    if options.interfaces is not None:
        interfaces = list(options.interfaces)
    else:
        import psutil

        interfaces = sorted(psutil.net_if_addrs())
    limit = memlock_limit() if options.memlock_bytes == -1 else options.memlock_bytes
    instance_type = options.instance_type or env.get("DDLC_INSTANCE_TYPE")

    boot_status = read_boot_status(options.boot_status_file)  # only cluster nodes have one
    results = [check_boot(boot_status)] if boot_status is not None else []
    results += [
        check_gpus(gpus, torch, expected, env),
        check_driver_cuda(read_driver_version(options.proc_root), torch, bool(expected) or bool(gpus)),
        check_nccl(torch, bool(gpus)),
        check_efa(devices, find_fi_info(env), options.expect_efa, options.fi_info_runner),
        check_ofi_nccl(devices, find_ofi_nccl_plugin(env)),
        check_nccl_net_plugin(efa_present, bool(gpus) and torch.cuda_available, torch.nccl_available,
                              options.nccl_probe or (lambda: run_nccl_probe(env))),
        check_fabricmanager(nvswitch_present(options.dev_root, instance_type),
                            process_running(options.proc_root, FABRIC_MANAGER), instance_type),
        check_nccl_env(env, interfaces, efa_present),
        check_memlock(limit, efa_present),
        check_hugepages(_read_int(options.proc_root / "sys/vm/nr_hugepages"),
                        _read_text(options.sys_root / "kernel/mm/transparent_hugepage/enabled"), env, efa_present),
        check_disk(local_checkpoint_path(uri) or options.run_dir, options.min_free_gb),
        check_checkpoint_write(uri, options.endpoint_url, options.network_timeout_s),
        check_master_port(port),
    ]
    host_facts = hosts = None
    runner = options.runner or SshRunner()
    if hostfile is not None:
        from ddlc.monitor.prometheus_config import parse_hostfile  # the same hostfile format deepspeed reads

        hosts = [entry.host for entry in parse_hostfile(hostfile)]
        host_facts = gather_hosts(runner, hosts, options.remote_python, timeout_s=max(options.network_timeout_s, 30))
    # A hostfile found on the node (not asked for) must not fail every run on a cluster without ssh keys.
    unreachable = Status.FAIL if options.hostfile is not None else Status.WARN
    results.append(check_clock_skew(host_facts, unreachable_status=unreachable))
    results.append(check_versions(local_versions(), host_facts))
    reachable = [h.host for h in host_facts if h.reachable] if host_facts is not None else None
    results.append(check_shared_checkpoint(uri, reachable, runner, options.remote_python, options.endpoint_url,
                                           max(options.network_timeout_s, 30), unreachable))
    return results


__all__ = [
    "CheckResult", "DoctorOptions", "HostFacts", "SshRunner", "Status", "TorchFacts", "report", "run_checks",
    "worst",
]
