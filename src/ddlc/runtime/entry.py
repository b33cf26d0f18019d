"""`train.py` / `python -m ddlc.train`: the process every launcher starts (torchrun, deepspeed, horovodrun, python).

    train.py --config config.yaml [dotted.key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from ddlc.checkpoint.errors import CheckpointIOError
from ddlc.config.loader import load_config
from ddlc.errors import UserError
from ddlc.runtime.run_identity import resolve_config_path, run_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train with ddlc. Extra arguments are dotted config overrides, e.g. training.max_steps=200.",
    )
    parser.add_argument("--config", help="YAML config file (default: ./config.yaml when present, else built-in defaults)")
    # Launchers pass these; accepted here so train.py runs unchanged under each of them.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    # `--deepspeed ds_config.json` (as in the runbook) or DeepSpeed's `--deepspeed --deepspeed_config FILE`.
    parser.add_argument("--deepspeed", nargs="?", const=True, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deepspeed_config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    return parser


def _is_rank_zero() -> bool:
    for name in ("RANK", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if name in os.environ:
            return os.environ[name] == "0"
    return True


def limit_cpu_threads() -> None:
    """Without OMP_NUM_THREADS, share this machine's cores among the workers on it instead of each taking all.

    torchrun sets OMP_NUM_THREADS=1 itself; a plain `python train.py`, horovodrun or mpirun do not.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    local = 1
    for name in ("LOCAL_WORLD_SIZE", "HOROVOD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        if os.environ.get(name, "").isdigit():
            local = max(int(os.environ[name]), 1)
            break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), cores // local)))


def config_arguments(args: argparse.Namespace) -> tuple[Optional[str], list[str]]:
    """(config file, overrides) that parsed train.py arguments stand for (`--deepspeed` becomes overrides)."""
    overrides = list(args.overrides)
    if isinstance(args.deepspeed, str) and "=" in args.deepspeed:
        overrides.insert(0, args.deepspeed)  # `--deepspeed a.b=c`: a bare flag followed by an override
        args.deepspeed = True
    if args.deepspeed:
        ds_json = args.deepspeed_config or (args.deepspeed if isinstance(args.deepspeed, str) else None)
        engine = ["distributed.strategy=deepspeed"]
        if ds_json:
            engine.append(f"distributed.deepspeed.config={ds_json}")
        overrides = engine + overrides  # explicit overrides on the command line still win
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UserError(f"unexpected argument {bad[0]!r}: overrides look like training.max_steps=200")
    return args.config, overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one training process; returns the exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        import torch

        from ddlc.runtime.requirements import check_torch_version

        check_torch_version(torch.__version__)
        config_path, overrides = config_arguments(args)
        config_path = resolve_config_path(config_path)
        cfg = load_config(config_path, overrides)
        if _is_rank_zero():
            source = f"{config_path}" + (" (found in the working directory)" if args.config is None else "")
            print(f"ddlc: config {source if config_path else 'built-in defaults (no --config, no ./config.yaml)'}",
                  flush=True)
        cfg.monitoring.run_name = run_name(cfg, config_path)  # before any process changes cfg
        if "HOROVOD_RANK" in os.environ and cfg.distributed.strategy == "ddp":
            cfg.distributed.strategy = "horovod"  # started by horovodrun: let Horovod carry the gradients
        limit_cpu_threads()
        from ddlc.runtime.distributed import detect_launch_env, init_distributed, shutdown_distributed
        from ddlc.runtime.preflight import check_job, worker_device
        from ddlc.runtime.trainer import train

        from ddlc.runtime.preemption import PREEMPTED_EXIT_CODE

        launch = detect_launch_env()
        # Before any collective: every rank reaches the same verdict, so all leave with exit 2 together.
        check_job(cfg, launch.world_size, launch.local_world_size,
                  *worker_device(cfg.distributed.device, launch.local_rank))
        ctx = init_distributed(cfg.distributed.device, cfg.distributed.backend, cfg.distributed.timeout_s)
        result = train_then_leave(train, cfg, ctx, shutdown_distributed)
        if result.preempted:
            return PREEMPTED_EXIT_CODE
    except UserError as error:
        every_node = getattr(error, "every_node", False)
        if _is_rank_zero() or (every_node and os.environ.get("LOCAL_RANK", "0") == "0"):
            print(f"error: {error}", file=sys.stderr, flush=True)
        _tell_torchrun(f"error: {error}")
        _let_the_speaker_speak(error.exit_code, every_node)
        return error.exit_code
    except CheckpointIOError as error:  # a final save or a load that failed on every rank: one line, its own code
        if _is_rank_zero():
            print(f"error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    return 0


def train_then_leave(train, cfg, ctx, shutdown):
    """Train, then leave the process group. Rank 0 waits for its peers to be done with the job's store only when
    they can still come: after training ended (or every rank reached the same UserError/CheckpointIOError
    verdict, whose outcome peers may still be reading). Any other exception is a broken job, typically a
    collective that failed because a peer died: nobody will say it is done, and waiting for it held a surviving
    rank 0 past torchrun's 30 s shutdown grace on every worker restart."""
    try:
        result = train(cfg, ctx)
    except (UserError, CheckpointIOError):
        shutdown()
        raise
    except BaseException:
        shutdown(wait_for_peers=False)
        raise
    shutdown()
    return result


def _let_the_speaker_speak(exit_code: int, every_node: bool, limit_s: float = 60.0) -> None:
    """The workers beside the one that prints the error (rank 0; each node's first for a node's own error) wait
    for it to leave first.

    torchrun (and DeepSpeed's launcher) SIGTERM a node's remaining workers as soon as one of them exits, so a
    peer that reaches the same error first would otherwise kill the speaker before it prints. The agent's
    SIGTERM, once the speaker has exited, ends the wait with the same quiet exit code.
    """
    from ddlc.runtime.distributed import detect_launch_env

    try:
        launch = detect_launch_env()
    except UserError:
        return
    if launch.launcher not in ("torchrun", "deepspeed"):
        return
    if (launch.local_rank == 0) if every_node else (launch.rank == 0 or launch.node_rank != 0):
        return
    import signal
    import time

    signal.signal(signal.SIGTERM, lambda *_: os._exit(exit_code))
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and os.getppid() != 1:
        time.sleep(0.2)


def _tell_torchrun(message: str) -> None:
    """Hand the one-line error to torchrun's failure summary (its "Root Cause ... traceback" field).

    torchrun still prints its ChildFailedError block and exits 1 when workers exit non-zero; with this file the
    block at least shows our line instead of "To enable traceback see ...". Written quietly by every rank, since
    torchrun names whichever rank it saw fail first.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import json
    import time

    try:
        with open(path, "w") as file:
            # The layout torch's own @record writes; torchrun shows extraInfo.py_callstack as the "traceback".
            json.dump({"message": {"message": message,
                                   "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}}, file)
    except OSError:
        pass


def run() -> None:
    """Entry for scripts: exit without C++ teardown races (see `hard_exit`)."""
    from ddlc.runtime.distributed import hard_exit

    hard_exit(main())


if __name__ == "__main__":
    run()
