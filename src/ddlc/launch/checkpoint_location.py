"""Before `ddlc launch` starts a job: when the job checkpoints to a local path, every node must see that path as
one shared place (otherwise each node writes its shards to its own disk and every save fails).

    script args (train.py's `--config FILE key=value ...`) -> the config's checkpoint location (None: nothing to check)
      -> the first host writes a probe there, every other host reads it and writes its own, the first host reads
         those back (one ssh command per step, run in the job's working directory)
      -> problem: exit 2 naming the location and the nodes that cannot see it

An `s3://` location, a single node, a job without checkpoints or a script whose arguments are not train.py's are
not checked here; training itself checks at start on every rank (ddlc.checkpoint.shared_location).
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Optional, Sequence

from ddlc.errors import UserError


def configured_location(script_args: Sequence[str], workdir: str) -> Optional[str]:
    """The local checkpoint location of a train.py job (relative to `workdir`, as on the nodes), or None."""
    import os

    from ddlc.config.loader import load_config
    from ddlc.runtime.entry import build_parser

    try:
        args, unknown = build_parser().parse_known_args(list(script_args))
        if unknown or any("=" not in o for o in args.overrides):
            return None
        config = args.config
        if config and not os.path.isabs(config):
            config = os.path.join(workdir, config)
        cfg = load_config(config, args.overrides)
    except (UserError, SystemExit, OSError):
        return None  # not train.py's arguments (or not readable here): training checks at start instead
    if not cfg.checkpoint.enabled:
        return None
    # Without checkpoint.uri the location is <run_dir>/<run name>/checkpoints: the run directory must be shared.
    location = cfg.checkpoint.uri or (os.path.join(cfg.monitoring.run_dir, cfg.monitoring.run_name)
                                      if cfg.monitoring.run_name else cfg.monitoring.run_dir)
    if location.startswith("file://"):
        location = location[len("file://"):]
    if "://" in location:
        return None
    return location


def check_before_launch(plan, ssh, python: str, script_args: Sequence[str], timeout_s: float = 60.0,
                        exclude: Optional[set] = None) -> None:
    """Raise UserError when the job's local checkpoint location is not shared by all of `plan`'s hosts (but those
    in `exclude`: left out by the health check)."""
    from ddlc.checkpoint.shared_location import check_hosts

    hosts = [h for h in plan.hosts if h.name not in (exclude or set())]
    if len(hosts) < 2 or plan.engine not in ("torchrun", "deepspeed", "horovod"):
        return
    location = configured_location(script_args, plan.workdir)
    if location is None:
        return

    def run_on_host(host: str, argv: list, timeout: float) -> tuple:
        command = f"cd {shlex.quote(plan.workdir)} && {shlex.join(argv)}"
        local = any(h.name == host and h.is_local for h in hosts)
        full = ["bash", "-c", command] if local else ssh.argv(host) + [command]
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return proc.returncode, proc.stdout, proc.stderr

    problem = check_hosts(location, [h.name for h in hosts], run_on_host, python, None, timeout_s)
    if problem:
        raise UserError(problem)
