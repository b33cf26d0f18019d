"""One node's part of a `ddlc submit` job: `srun` runs `python -m ddlc.scheduler.step --nproc-per-node=G -- SCRIPT
ARGS` once per node, and this becomes ddlc's torchrun wrapper (ddlc.launch.torchrun) with:

    rendezvous   c10d on the allocation's first node (SLURM_JOB_NODELIST), port = base + job id mod 10000, so two
                 jobs sharing a node do not meet in one store, and a requeued job (same id) finds its own again
    --nnodes     SLURM_JOB_NUM_NODES (fixed: a lost node requeues the whole job, which resumes from its checkpoint)
    --local-addr this node's address towards the first node (the workers' MASTER_ADDR when this node hosts rank 0):
                 a host name may resolve differently on each node; the address the kernel uses does not
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: restarted workers never read a dead attempt's addresses
                 (pytorch/pytorch#135712)

Exit codes are the wrapper's: 75 when the workers checkpointed on scancel's or the time limit's SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Mapping, Optional, Sequence

from ddlc.errors import UserError, exit_with
from ddlc.launch.slurm import expand_nodelist

# Rendezvous ports: base + job id mod PORT_SPAN (20000-29999 by default), below Linux's ephemeral range
# (32768-60999), where an outgoing connection could hold the port, and below srun's SrunPortRange.
PORT_SPAN = 10000


def rendezvous(env: Mapping[str, str], port_base: int) -> tuple[str, int, str, int]:
    """(first node, port, run id, number of nodes) of this allocation."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    job = env.get("SLURM_JOB_ID")
    if not nodelist or not job or not job.isdigit():
        raise UserError("ddlc.scheduler.step runs inside a Slurm job (no SLURM_JOB_NODELIST/SLURM_JOB_ID here); "
                        "submit with `ddlc submit`")
    nodes = expand_nodelist(nodelist)
    count = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or str(len(nodes))
    return nodes[0], port_base + int(job) % PORT_SPAN, f"slurm-{job}", int(count)


def address_towards(host: str) -> str:
    """The source address this machine uses to reach `host` (no packet is sent)."""
    try:
        target = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(target[0], socket.SOCK_DGRAM) as probe:
            probe.connect(target[4])
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


def torchrun_argv(env: Mapping[str, str], nproc_per_node: int, port_base: int, user: Sequence[str]) -> list[str]:
    head, port, run_id, nnodes = rendezvous(env, port_base)
    return [f"--nnodes={nnodes}", f"--nproc_per_node={nproc_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={head}:{port}", f"--rdzv-id={run_id}", "--max-restarts=0",
            f"--local-addr={address_towards(head)}", *user]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddlc.scheduler.step")
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--port-base", type=int, default=20000)
    parser.add_argument("user", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    user = args.user[1:] if args.user[:1] == ["--"] else args.user
    try:
        command = torchrun_argv(os.environ, args.nproc_per_node, args.port_base, user)
    except UserError as error:
        exit_with(error)
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    if os.environ.get("SLURM_NODEID", "0") == "0":
        print("ddlc: torchrun " + " ".join(command), flush=True)
    from ddlc.launch.torchrun import main as torchrun

    return torchrun(command)


if __name__ == "__main__":
    sys.exit(main())
