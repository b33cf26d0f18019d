"""Distributed setup from the launcher's environment: torchrun, DeepSpeed, Horovod, Slurm, or a plain process.

`init_distributed()` is usable from any training script::

    ctx = init_distributed()          # reads RANK/WORLD_SIZE/... whichever launcher set them
    model = wrap_model(model, ctx)    # DDP or FSDP2
    ...
    shutdown_distributed()
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import sys
from dataclasses import dataclass
from typing import Literal, Mapping, Optional

import torch
import torch.distributed as dist

from ddlc.errors import UserError
from ddlc.launch.slurm import expand_nodelist

Launcher = Literal["torchrun", "deepspeed", "env", "horovod", "mpi", "slurm", "single"]


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job, as told by whichever launcher started it."""

    launcher: Launcher
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def node_rank(self) -> int:
        return self.rank // max(self.local_world_size, 1)

    @property
    def num_nodes(self) -> int:
        return max(self.world_size // max(self.local_world_size, 1), 1)


def _int(env: Mapping[str, str], *names: str, default: Optional[int] = None) -> Optional[int]:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise UserError(f"environment variable {name}={value!r} is not an integer") from None
    return default


def _local_rank(env: Mapping[str, str], name: str, rank: int, local_world: int) -> int:
    """The launcher's local rank; when it sets none, the rank's place on its node (rank mod ranks per node), never
    0 for every rank (which would put all of a node's ranks on its first GPU)."""
    return _int(env, name, default=rank % max(local_world, 1))


# Launchers that name rank, world size, local rank and local size in variables of their own.
_RANK_VARIABLES: tuple[tuple[Launcher, str, str, str, str], ...] = (
    ("horovod", "HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE"),
    ("mpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
)


def detect_launch_env(env: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read rank/world/master from the environment. Order: torchrun/deepspeed, Horovod, MPI, Slurm, single."""
    env = os.environ if env is None else env
    master_addr = env.get("MASTER_ADDR", "127.0.0.1")
    master_port = _int(env, "MASTER_PORT", default=29500)

    if "RANK" in env and "WORLD_SIZE" in env:
        # torchrun and the deepspeed launcher both export the torch.distributed variables.
        if "TORCHELASTIC_RUN_ID" in env:
            launcher: Launcher = "torchrun"
        elif "CROSS_RANK" in env or "LOCAL_SIZE" in env:
            launcher = "deepspeed"
        else:
            launcher = "env"
        world = _int(env, "WORLD_SIZE")
        rank = _int(env, "RANK")
        local_world = _int(env, "LOCAL_WORLD_SIZE", "LOCAL_SIZE", default=world)
        return LaunchEnv(
            launcher=launcher,
            rank=rank,
            world_size=world,
            local_rank=_local_rank(env, "LOCAL_RANK", rank, local_world),
            local_world_size=local_world,
            master_addr=master_addr,
            master_port=master_port,
        )
    for launcher, rank_name, size, local_rank, local_size in _RANK_VARIABLES:
        if rank_name in env:
            world = _int(env, size)
            rank = _int(env, rank_name)
            local_world = _int(env, local_size, default=world)
            return LaunchEnv(launcher, rank, world, _local_rank(env, local_rank, rank, local_world),
                             local_world, master_addr, master_port)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world = _int(env, "SLURM_NTASKS")
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        addr = env.get("MASTER_ADDR") or (expand_nodelist(nodelist)[0] if nodelist else "127.0.0.1")
        return LaunchEnv(
            "slurm",
            _int(env, "SLURM_PROCID"),
            world,
            _local_rank(env, "SLURM_LOCALID", _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS_PER_NODE", default=world)),
            _int(env, "SLURM_NTASKS_PER_NODE", default=world),
            addr,
            master_port,
        )
    return LaunchEnv("single", 0, 1, 0, 1, master_addr, master_port)


@dataclass(frozen=True)
class DistContext:
    """The initialised job: who we are, which device we drive, and which backend carries collectives."""

    env: LaunchEnv
    device: torch.device
    backend: str

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def local_rank(self) -> int:
        return self.env.local_rank

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0

    @property
    def node(self) -> str:
        return socket.gethostname()


def select_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if preference == "cuda":
        raise UserError("distributed.device: 'cuda' requested but no CUDA device is available")
    return torch.device("cpu")


def select_backend(preference: str, device: torch.device) -> str:
    if preference == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if preference == "nccl" and device.type != "cuda":
        raise UserError("distributed.backend: 'nccl' needs CUDA devices; use 'gloo' or 'auto' on CPU")
    return preference


def init_distributed(
    device: str = "auto",
    backend: str = "auto",
    timeout_s: float = 600,
    env: Mapping[str, str] | None = None,
) -> DistContext:
    """Initialise torch.distributed from the launcher's environment (idempotent).

    A single process still gets a 1-rank process group, so DDP/FSDP2/DCP code paths are the same everywhere.
    """
    launch = detect_launch_env(env)
    dev = select_device(device, launch.local_rank)
    chosen = select_backend(backend, dev)
    if not dist.is_initialized():
        timeout = _dt.timedelta(seconds=timeout_s)
        if launch.world_size == 1 and launch.launcher == "single":
            store = dist.HashStore()
            dist.init_process_group(chosen, store=store, rank=0, world_size=1, timeout=timeout)
        else:
            if launch.launcher == "horovod" and "MASTER_ADDR" not in os.environ:
                horovod_rendezvous()
                launch = detect_launch_env(env)
            os.environ.setdefault("MASTER_ADDR", launch.master_addr)
            os.environ.setdefault("MASTER_PORT", str(launch.master_port))
            kwargs = {"device_id": dev} if dev.type == "cuda" else {}
            store = attempt_store(launch, timeout, env)
            if store is not None:
                kwargs["store"] = store
            else:
                kwargs["init_method"] = "env://"
            dist.init_process_group(
                chosen,
                rank=launch.rank,
                world_size=launch.world_size,
                timeout=timeout,
                **kwargs,
            )
    return DistContext(env=launch, device=dev, backend=chosen)


def attempt_store(launch: LaunchEnv, timeout: _dt.timedelta, env: Mapping[str, str] | None = None):
    """Under torchrun --max-restarts, keep each restart's process-group keys apart (pytorch/pytorch#135712).

    torchrun hands its workers its own rendezvous store, which outlives a restart: restarted workers then read the
    previous attempt's addresses from it and dial dead peers ("Connection refused") unless the user knew to set
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1. On one node every worker has the same restart count: rank 0 starts the
    job's own store and announces its port under a prefix per attempt, so no stale key is ever read, and the
    store outlives a killed agent (checkpoint agreement goes through it). Across nodes the agents' counts can differ: there the variable is needed (the cluster's
    /etc/ddlc/cluster.env sets it) and rank 0 says so when it is missing.
    """
    env = os.environ if env is None else env
    if launch.launcher != "torchrun" or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if launch.num_nodes > 1:
        if launch.rank == 0 and env.get("TORCHELASTIC_MAX_RESTARTS", "0") not in ("", "0"):
            print("warning: torchrun --max-restarts across nodes needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in "
                  "torchrun's environment (pytorch/pytorch#135712; /etc/ddlc/cluster.env sets it): without it "
                  "restarted workers can fail with 'Connection refused'", file=sys.stderr, flush=True)
        return None
    agent = dist.TCPStore(launch.master_addr, launch.master_port, launch.world_size, is_master=False,
                          timeout=timeout)
    attempt = dist.PrefixStore(f"ddlc/attempt-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent)
    # The job's own store lives in rank 0, not in the agent: if torchrun's agent is killed, the workers can still
    # agree on (and commit) the checkpoint they make before they stop.
    global _OWN_STORE
    if launch.rank == 0:
        store = dist.TCPStore(launch.master_addr, 0, launch.world_size, is_master=True, timeout=timeout,
                              wait_for_workers=False)
        attempt.set("store_port", str(store.port))
    else:
        port = int(attempt.get("store_port").decode())
        store = dist.TCPStore(launch.master_addr, port, launch.world_size, is_master=False, timeout=timeout)
    _OWN_STORE = store
    return store


_OWN_STORE = None  # ddlc's own store (rank 0 hosts its server): referenced so it lives as long as the process


def _leave_store_last(wait_s: float = 30.0) -> None:
    """The process hosting the job's store (rank 0: it hosts the env:// store and ddlc's own one, and on node 0 its
    agent hosts torchrun's) leaves only after every other rank is done with the store (bounded wait).

    Without this, rank 0 publishes the final checkpoint's commit outcome and exits at once, taking the store with it
    while another rank is still reading that outcome: that rank saw "Connection reset by peer" and reported a
    failed final save (exit 74) for a checkpoint that had committed.
    """
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        store, rank, world = _get_default_store(), dist.get_rank(), dist.get_world_size()
    except Exception:  # noqa: BLE001 (an init method without a store: nothing to keep alive)
        return
    if world <= 1:
        return
    try:
        store.set(f"ddlc/exiting/{rank}", "1")
        if rank == 0:
            store.wait([f"ddlc/exiting/{r}" for r in range(1, world)], _dt.timedelta(seconds=wait_s))
    except Exception:  # noqa: BLE001 (a peer that died never says so; a gone store needs no waiting)
        pass


def horovod_rendezvous() -> None:
    """Under horovodrun, find torch.distributed's master through Horovod itself.

    horovodrun exports ranks but no MASTER_ADDR; rank 0 picks its own address (the one that reaches horovodrun's
    rendezvous server) and a free port, and Horovod broadcasts them to every rank.
    """
    from ddlc.runtime.engines.horovod_engine import import_horovod

    hvd = import_horovod()
    hvd.init()
    address = None
    if hvd.rank() == 0:
        target = os.environ.get("HOROVOD_GLOO_RENDEZVOUS_ADDR", "127.0.0.1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))  # no packet is sent: this only asks the kernel for the outgoing address
            host = probe.getsockname()[0]
        with socket.socket() as sock:
            sock.bind((host, 0))
            address = (host, sock.getsockname()[1])
    host, port = hvd.broadcast_object(address, root_rank=0, name="ddlc.master")
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = host, str(port)


def shutdown_distributed(wait_for_peers: bool = True) -> None:
    """Leave the process group. `wait_for_peers=False` after a failure that broke the job (a collective failed:
    a peer died): no peer will say it is done, and waiting for it held a surviving rank 0 past torchrun's 30 s
    shutdown grace on every worker restart."""
    if dist.is_initialized():
        if wait_for_peers:
            _leave_store_last()
        dist.destroy_process_group()


def hard_exit(code: int = 0) -> None:
    """Leave without running C++ static destructors.

    gloo occasionally aborts in its destructors after a successful run ("terminate called without an active
    exception"); flushing and `os._exit` after `destroy_process_group()` keeps the exit code honest.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
