"""slurm.conf, gres.conf and cgroup.conf from the cluster's description. Pure text: no Slurm, no AWS here.

    ClusterSpec (controller, nodes, partition, paths)          built by the cluster's boot (discovery + the
        |                                                      instance table) or by the tests' namespace hosts
        v
    render_slurm_conf / render_gres_conf / render_cgroup_conf -> files slurmctld and every slurmd read

Choices that matter for training jobs, and why:
- `select/cons_tres` with GPUs as GRES, so `--gpus-per-node` is honoured and two jobs never share a GPU.
- `JobRequeue=1` and `ReturnToService=2`: a job on a failed node goes back to the queue, and a node that comes
  back healthy (or a replacement registering under the same name) takes work again without a person.
- `KillWait`: seconds between the SIGTERM of `scancel`/a time limit and the SIGKILL. ddlc checkpoints on SIGTERM,
  so this must cover one checkpoint save (`kill_wait_s`).
- `HealthCheckProgram` runs `ddlc health` on every slurmd (HEALTH_CHECK_PROGRAM): a failing node is drained with
  the reason, and a node that passes again is resumed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional

from ddlc.errors import UserError

SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818
# Installed on every node by the boot script: runs `ddlc health --slurm-drain` (drain on failure, resume on pass).
HEALTH_CHECK_PROGRAM = "/usr/local/sbin/ddlc-slurm-health"
DEFAULT_PARTITION = "gpu"

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class SlurmNode:
    """One compute node. `name` is what its slurmd registers as (`slurmd -N name`, or its hostname)."""

    name: str
    address: str
    cpus: int
    gpus: int = 0
    gpu_type: Optional[str] = None  # e.g. "a100"; lower case, as `--gpus=a100:8` spells it
    sockets: Optional[int] = None
    cores_per_socket: Optional[int] = None
    threads_per_core: Optional[int] = None
    real_memory_mb: Optional[int] = None  # leave below what the OS reports, or slurmctld drains the node
    gpu_files: Optional[str] = None  # e.g. "/dev/nvidia[0-7]"; None: NVML autodetect (gres.conf AutoDetect)


@dataclass(frozen=True)
class ClusterSpec:
    cluster_name: str
    controller: str  # SlurmctldHost name
    controller_address: str
    nodes: tuple[SlurmNode, ...]
    partition: str = DEFAULT_PARTITION
    slurm_user: str = "slurm"
    state_dir: str = "/var/spool/slurmctld"
    spool_dir: str = "/var/spool/slurmd"  # may contain %n: one per node when several slurmd share a file system
    log_dir: str = "/var/log/slurm"
    run_dir: str = "/run/slurm"
    munge_socket: Optional[str] = None  # None: munge's default socket
    health_check_program: Optional[str] = HEALTH_CHECK_PROGRAM
    health_check_interval_s: int = 300
    kill_wait_s: int = 120
    slurmctld_port: int = SLURMCTLD_PORT
    slurmd_port: int = SLURMD_PORT
    # cgroup: real nodes (jobs confined to their cores/GPUs). linuxproc: containers and the tests' namespaces,
    # where this machine's cgroup hierarchy is not ours to hand out.
    process_tracking: Literal["cgroup", "linuxproc"] = "cgroup"
    max_time: str = "INFINITE"
    extra_lines: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for label, name in [("cluster_name", self.cluster_name), ("controller", self.controller),
                            ("partition", self.partition), *[("node name", n.name) for n in self.nodes]]:
            if not _NAME.fullmatch(name):
                raise UserError(f"slurm {label} {name!r}: use letters, digits, '-', '_' or '.', starting with a letter")
        if not self.nodes:
            raise UserError("slurm cluster has no compute nodes")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise UserError(f"slurm node names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        if self.partition == "DEFAULT":  # Slurm reads `PartitionName=DEFAULT` as defaults, not a partition
            raise UserError("slurm partition 'DEFAULT' is Slurm's defaults line; choose another name")
        for node in self.nodes:
            if node.cpus < 1 or node.gpus < 0:
                raise UserError(f"slurm node {node.name}: cpus must be >= 1 and gpus >= 0")
            for label in ("address", "gpu_type", "gpu_files"):
                _one_word(f"slurm node {node.name} {label}", getattr(node, label))
        # Every other value lands on a `Key=value` line: a space or newline would end the value and start
        # another key (a second AuthType, a gres File=), so each must be one word.
        for label in ("controller_address", "slurm_user", "state_dir", "spool_dir", "log_dir", "run_dir",
                      "munge_socket", "health_check_program", "max_time"):
            _one_word(f"slurm {label}", getattr(self, label))
        for line in self.extra_lines:
            if any(c in line for c in "\r\n") or not line.strip():
                raise UserError(f"slurm extra line {line!r}: one non-empty line each")
        if self.process_tracking not in ("cgroup", "linuxproc"):
            raise UserError(f"slurm process_tracking {self.process_tracking!r}: cgroup or linuxproc")
        ports = (self.slurmctld_port, self.slurmd_port)
        if not all(0 < port < 65536 for port in ports) or ports[0] == ports[1]:
            raise UserError(f"slurm ports {ports}: two different ports in 1-65535")
        if self.kill_wait_s < 0 or self.health_check_interval_s < 1:
            raise UserError("slurm kill_wait_s must be >= 0 and health_check_interval_s >= 1")

    @property
    def has_gpus(self) -> bool:
        return any(node.gpus for node in self.nodes)


def _one_word(label: str, value: Optional[str]) -> None:
    if value is not None and (not value or any(c.isspace() or c == "#" for c in value)):
        raise UserError(f"{label} {value!r}: must be one word (no spaces, newlines or '#')")


def _node_line(node: SlurmNode) -> str:
    parts = [f"NodeName={node.name}", f"NodeAddr={node.address}", f"CPUs={node.cpus}"]
    if node.sockets:
        parts.append(f"Sockets={node.sockets}")
    if node.cores_per_socket:
        parts.append(f"CoresPerSocket={node.cores_per_socket}")
    if node.threads_per_core:
        parts.append(f"ThreadsPerCore={node.threads_per_core}")
    if node.real_memory_mb:
        parts.append(f"RealMemory={node.real_memory_mb}")
    if node.gpus:
        kind = f"gpu:{node.gpu_type}:{node.gpus}" if node.gpu_type else f"gpu:{node.gpus}"
        parts.append(f"Gres={kind}")
    parts.append("State=UNKNOWN")
    return " ".join(parts)


def render_slurm_conf(spec: ClusterSpec) -> str:
    tracking = ("ProctrackType=proctrack/cgroup\nTaskPlugin=task/cgroup,task/affinity"
                if spec.process_tracking == "cgroup" else "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none")
    lines = [
        "# Generated by ddlc (ddlc.scheduler.slurm_conf); edits are overwritten when the node list changes.",
        f"ClusterName={spec.cluster_name}",
        f"SlurmctldHost={spec.controller}({spec.controller_address})",
        f"SlurmUser={spec.slurm_user}",
        f"SlurmctldPort={spec.slurmctld_port}",
        f"SlurmdPort={spec.slurmd_port}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
    ]
    if spec.munge_socket:
        lines.append(f"AuthInfo=socket={spec.munge_socket}")
    lines += [
        f"StateSaveLocation={spec.state_dir}",
        f"SlurmdSpoolDir={spec.spool_dir}",
        f"SlurmctldPidFile={spec.run_dir}/slurmctld.pid",
        f"SlurmdPidFile={spec.run_dir}/slurmd-%n.pid",
        f"SlurmctldLogFile={spec.log_dir}/slurmctld.log",
        f"SlurmdLogFile={spec.log_dir}/slurmd-%n.log",
        tracking,
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "JobRequeue=1",
        "ReturnToService=2",
        f"KillWait={spec.kill_wait_s}",
        "SlurmctldTimeout=120",
        "SlurmdTimeout=120",
        "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
    ]
    if spec.has_gpus:
        lines.append("GresTypes=gpu")
    if spec.health_check_program:
        lines += [f"HealthCheckProgram={spec.health_check_program}",
                  f"HealthCheckInterval={spec.health_check_interval_s}",
                  "HealthCheckNodeState=ANY"]
    lines += list(spec.extra_lines)
    lines += [_node_line(node) for node in spec.nodes]
    names = ",".join(node.name for node in spec.nodes)
    lines.append(f"PartitionName={spec.partition} Nodes={names} Default=YES MaxTime={spec.max_time} State=UP")
    return "\n".join(lines) + "\n"


def render_gres_conf(spec: ClusterSpec) -> str:
    """GPUs per node: explicit device files where known, else NVML autodetect (needs Slurm built with NVML)."""
    lines = ["# Generated by ddlc (ddlc.scheduler.slurm_conf)."]
    for node in spec.nodes:
        if not node.gpus:
            continue
        if node.gpu_files:
            kind = f" Type={node.gpu_type}" if node.gpu_type else ""
            lines.append(f"NodeName={node.name} Name=gpu{kind} File={node.gpu_files}")
        else:
            lines.append(f"NodeName={node.name} AutoDetect=nvml")
    return "\n".join(lines) + "\n"


def render_cgroup_conf(spec: ClusterSpec) -> str:
    return ("# Generated by ddlc (ddlc.scheduler.slurm_conf).\n"
            "ConstrainCores=yes\nConstrainDevices=yes\nConstrainRAMSpace=no\n")
