"""`ddlc launch` checks the training job's config on the launching host, before it ssh'es anywhere.

    script + its arguments + the world sizes the plan allows (elastic: every node count from min to max)
      -> is it ddlc's train.py (a script that runs ddlc.runtime.entry)?  no: nothing to check
      -> train.py's own argument parsing -> load_config (file + overrides, strict) -> batch plan for world size
    bad: UserError (exit 2, one line) and no node is touched

Data paths, output directories and memory are node-side facts: each worker checks them before any collective
(ddlc.runtime.preflight).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Optional, Sequence

from ddlc.errors import UserError

ENTRY_MARKERS = ("ddlc.runtime.entry", "ddlc.train")


def is_ddlc_train_script(script: Path) -> bool:
    """A script that hands over to ddlc's entry point (the repository's train.py, or a copy of it)."""
    try:
        text = script.read_text(encoding="utf-8", errors="replace")[:100_000]
    except OSError:
        return False
    return any(marker in text for marker in ENTRY_MARKERS)


def possible_world_sizes(slots: Sequence[int], min_nodes: Optional[int] = None) -> list[int]:
    """Every worker count the job can run with: all hosts, or (elastic) any min_nodes..all of them."""
    counts = range(min_nodes or len(slots), len(slots) + 1)
    reachable: set[tuple[int, int]] = {(0, 0)}  # (hosts, workers) sums over subsets of the hosts
    for n in slots:
        reachable |= {(h + 1, w + n) for h, w in reachable}
    return sorted({w for h, w in reachable if h in counts})


def check_training_job(script: str, script_args: Sequence[str], world_sizes: Sequence[int] | int,
                       workdir: Optional[str]) -> bool:
    """Validate a ddlc train.py job for each of `world_sizes`; True if it was checked, False if not ours."""
    if isinstance(world_sizes, int):
        world_sizes = [world_sizes]
    base = Path(workdir) if workdir else Path.cwd()
    local_script = Path(script) if Path(script).is_absolute() else base / script
    if not local_script.is_file() or not is_ddlc_train_script(local_script):
        return False
    from ddlc.config.loader import load_config
    from ddlc.runtime.entry import build_parser, config_arguments
    from ddlc.runtime.preflight import check_job

    parser = build_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):  # argparse prints a usage block; we say it in one line
            args = parser.parse_args(list(script_args))
    except SystemExit:
        detail = errors.getvalue().strip().splitlines()
        raise UserError(f"{script} arguments: {detail[-1] if detail else 'invalid'}") from None
    config_path, overrides = config_arguments(args)
    if config_path is not None and not os.path.isabs(config_path):
        config_path = str(base / config_path)
    if config_path is not None and workdir and not Path(config_path).exists():
        from ddlc.config.loader import note

        note(f"--config {config_path} is not on this host: the nodes will check it")
        return False
    cfg = load_config(config_path, overrides)
    for world_size in world_sizes:
        check_job(cfg, world_size, paths=False)
    return True
