"""Slurm's view of a deployed cluster, built from discovery, and the node's Slurm files kept in step with it.

    `ddlc cluster slurm-conf` (boot, then the hostfile timer every 5 minutes, on every node)
      discovery.list_nodes (EC2 tags)
        └─> cluster_spec(): head node = SlurmctldHost; running workers of the Auto Scaling group = compute
            nodes, named after their EC2 hostname (ip-10-42-0-17, from the private DNS name); CPUs, sockets,
            memory and GPUs from the instance table (ddlc.infra.instance_types)
      node_files(): slurm.conf, gres.conf, cgroup.conf (ddlc.scheduler.slurm_conf) and, on a worker,
            /etc/default/slurmd with `-N <its name>` (so the name never depends on the hostname being right)
      sync_node(): each file written atomically, only when its text changed; then
            daemon not running          -> systemctl enable --now slurmctld|slurmd (first boot, or it died)
            head, node list changed     -> systemctl restart slurmctld (a node list change needs a restart
                                           before Slurm 23.11; state and running jobs survive it)
            anything else changed       -> scontrol reconfigure (slurmctld re-reads, and tells every slurmd)
            nothing changed             -> nothing
        A marker file is written before the files and removed after the daemon took them: a failed
        reconfigure (or a kill in between) is retried by the next run, though the files are already current.

A replaced worker comes up with a new address, so a new name: every node's timer drops the old name and adds
the new one; `ReturnToService=2` lets the new node take work as soon as its slurmd registers.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

from ddlc.errors import UserError
from ddlc.run_format import write_atomic
from ddlc.infra.discovery import ClusterNode, running_workers
from ddlc.infra.instance_types import GPU_INSTANCE_TYPES
from ddlc.scheduler.slurm_conf import ClusterSpec, SlurmNode, render_cgroup_conf, render_gres_conf, render_slurm_conf

# srun listens on these ports for its steps' I/O; the cluster security group opens them between members only.
SRUN_PORT_RANGE = (60001, 63000)
# RealMemory as a share of the type's nominal memory: the kernel and firmware keep a few percent, and a node
# reporting less than its RealMemory is drained by slurmctld ("Low RealMemory").
MEMORY_SHARE = 0.9
CONF_FILES = ("slurm.conf", "gres.conf", "cgroup.conf")
PENDING_MARKER = ".ddlc-slurm-pending"
ROLES = ("head", "worker")
_NODE_LINE = re.compile(r"^NodeName=(\S+)", re.MULTILINE)


def node_name(node: ClusterNode) -> str:
    """The EC2 hostname (first label of the private DNS name), else `ip-a-b-c-d` from the private address."""
    if node.private_dns_name:
        label = node.private_dns_name.split(".", 1)[0]
        if re.match(r"^[A-Za-z][A-Za-z0-9-]{0,62}$", label):
            return label
    if not node.private_ip:
        raise UserError(f"node {node.instance_id} has no private address yet")
    return "ip-" + node.private_ip.replace(".", "-")


def slurm_node(node: ClusterNode) -> SlurmNode:
    kind = GPU_INSTANCE_TYPES.get(node.instance_type)
    if kind is None:
        raise UserError(f"node {node.instance_id}: instance type '{node.instance_type}' is not in the instance "
                        f"table (ddlc.infra.instance_types); valid choices: {', '.join(GPU_INSTANCE_TYPES)}")
    return SlurmNode(
        name=node_name(node), address=str(node.private_ip), cpus=kind.vcpus, gpus=kind.gpus,
        gpu_type=kind.gpu.lower() or None, sockets=kind.sockets, cores_per_socket=kind.cores_per_socket,
        threads_per_core=kind.threads_per_core,
        real_memory_mb=int(kind.memory_gib * 1024 * MEMORY_SHARE) or None,
        gpu_files=(f"/dev/nvidia[0-{kind.gpus - 1}]" if kind.gpus > 1 else "/dev/nvidia0") if kind.gpus else None,
    )


def cluster_spec(cluster_name: str, nodes: Sequence[ClusterNode], **overrides) -> ClusterSpec:
    """The cluster as Slurm sees it: the running head node controls, the running workers compute, in
    discovery's order (the hostfile's). `overrides`: other ClusterSpec fields (tests: paths, munge socket)."""
    heads = [n for n in nodes if n.role == "head" and n.state == "running" and n.private_ip]
    if len(heads) != 1:
        raise UserError(f"cluster '{cluster_name}': expected one running head node, found {len(heads)}")
    workers = running_workers(list(nodes))
    if not workers:
        raise UserError(f"cluster '{cluster_name}' has no running worker nodes (yet)")
    head = heads[0]
    extra = (f"SrunPortRange={SRUN_PORT_RANGE[0]}-{SRUN_PORT_RANGE[1]}", *overrides.pop("extra_lines", ()))
    return ClusterSpec(
        cluster_name=cluster_name, controller=node_name(head), controller_address=str(head.private_ip),
        nodes=tuple(slurm_node(n) for n in workers), extra_lines=extra, **overrides,
    )


def installed_slurm_version(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Optional[tuple[int, int]]:
    """(major, minor) of the Slurm on this node (`sinfo -V` prints e.g. "slurm 21.08.5"), or None."""
    try:
        out = run(["sinfo", "-V"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)\.(\d+)", out or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def choose_process_tracking(version: Optional[tuple[int, int]],
                            cgroup_root: Path = Path("/sys/fs/cgroup")) -> str:
    """"cgroup" where this Slurm can use the host's cgroup hierarchy, else "linuxproc".

    Slurm's cgroup/v2 plugin arrived in 22.05; Ubuntu 22.04 (the DLAMI) mounts only cgroup v2 and ships Slurm
    21.08, whose proctrack/cgroup would stop slurmd from starting. There, jobs are tracked by process tree and
    GPUs are still handed out as GRES (CUDA_VISIBLE_DEVICES), only not fenced by a device cgroup.
    Every node runs the same AMI, so every node makes the same choice and slurm.conf stays identical."""
    unified_only = (cgroup_root / "cgroup.controllers").exists()
    if unified_only and (version is None or version < (22, 5)):
        return "linuxproc"
    return "cgroup"


def own_node(nodes: Iterable[ClusterNode], instance_id: str, cluster_name: str) -> ClusterNode:
    for node in running_workers(list(nodes)):
        if node.instance_id == instance_id:
            return node
    raise UserError(f"--instance-id: {instance_id} is not a running worker of cluster '{cluster_name}'")


def node_files(spec: ClusterSpec, conf_dir: Path, *, slurmd_defaults: Optional[Path] = None,
               own_name: Optional[str] = None) -> dict[Path, str]:
    """Path -> text of every file this node keeps; a worker's slurmd registers as `own_name`."""
    files = {
        conf_dir / "slurm.conf": render_slurm_conf(spec),
        conf_dir / "gres.conf": render_gres_conf(spec),
        conf_dir / "cgroup.conf": render_cgroup_conf(spec),
    }
    if slurmd_defaults is not None and own_name is not None:
        files[slurmd_defaults] = ("# Generated by ddlc: slurmd registers under the name slurm.conf gives this node.\n"
                                  f'SLURMD_OPTIONS="-N {own_name}"\n')
    return files


def node_names(slurm_conf: str) -> list[str]:
    return _NODE_LINE.findall(slurm_conf)


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UserError(f"{path}: {error.strerror or error}") from None


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Readers (slurmctld, slurmd, a concurrent run) see the old file or the new one, never half of one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text, mode=mode, durable=True)
    except OSError as error:
        raise UserError(f"{path}: {error.strerror or error}") from None


Runner = Callable[[Sequence[str]], int]


def run_command(argv: Sequence[str]) -> int:
    try:
        return subprocess.run(list(argv), timeout=120).returncode
    except FileNotFoundError:
        raise UserError(f"`{argv[0]}` is not installed (is Slurm installed on this node?)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"`{' '.join(argv)}` did not finish in 120 s") from None


@dataclass(frozen=True)
class SyncResult:
    changed: tuple[Path, ...]
    commands: tuple[tuple[str, ...], ...]


def sync_node(files: Mapping[Path, str], *, role: str, conf_dir: Path, apply: bool = True,
              run: Runner = run_command) -> SyncResult:
    """Write what changed; then start, restart or reconfigure the node's daemon as the module docstring says."""
    if role not in ROLES:
        raise UserError(f"--role: '{role}' is not one of {', '.join(ROLES)}")
    marker = conf_dir / PENDING_MARKER
    slurm_conf = conf_dir / "slurm.conf"
    changed = tuple(path for path, text in files.items() if _read(path) != text)
    # What the daemon needs: a restart when the head's node list changed, else a reconfigure; a marker left by
    # an earlier run that did not finish counts too (the stronger of the two wins).
    pending = (_read(marker) or "").strip()
    if changed:
        names_changed = slurm_conf in changed and node_names(_read(slurm_conf) or "") != node_names(files[slurm_conf])
        need = "restart" if role == "head" and names_changed else "reconfigure"
        pending = "restart" if "restart" in (need, pending) else "reconfigure"
        write_atomically(marker, pending + "\n")
        for path in changed:
            write_atomically(path, files[path])
    if not apply:
        return SyncResult(changed, ())
    daemon = "slurmctld" if role == "head" else "slurmd"
    commands: list[tuple[str, ...]] = []

    def call(*argv: str) -> None:
        commands.append(argv)
        if run(argv) != 0:
            raise UserError(f"`{' '.join(argv)}` failed; the files are written and the next run retries it")

    if run(("systemctl", "is-active", "--quiet", daemon)) != 0:
        call("systemctl", "enable", "--now", daemon)
    elif pending == "restart":
        call("systemctl", "restart", daemon)
    elif pending:
        call("scontrol", "reconfigure")
    marker.unlink(missing_ok=True)
    return SyncResult(changed, tuple(commands))
