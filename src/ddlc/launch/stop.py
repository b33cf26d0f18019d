"""`ddlc stop [RUN]`: find a run's processes from its run directory, ask them to stop, wait for the checkpoint.

    runs/<run>/launcher.json (ddlc train) ─┐
    runs/<run>/workers.json (agent, rank 0)┴─> the first live one gets SIGTERM ─> workers checkpoint, exit 75
                                                ─> wait for every recorded process ─> summary.json says the step

SIGTERM goes to the outermost process so nothing restarts the workers: `ddlc train` forwards it to torchrun,
torchrun's agent forwards it to its workers and does not restart them; a worker without either tells the others.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Optional

import psutil

from ddlc.errors import UserError
from ddlc.launch import run_files

ORDER = ("launcher", "agent", "rank0")
DESCRIPTION = {"launcher": "ddlc train", "agent": "torchrun agent", "rank0": "rank 0 worker"}


def live_runs(root: Path) -> dict[str, dict[str, psutil.Process]]:
    if not root.is_dir():
        return {}
    found = {}
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        live = run_files.running(run_dir)
        if live:
            found[run_dir.name] = live
    return found


def stop_run(root: Path, name: Optional[str], timeout: float, say=print) -> int:
    """0: stopped with a checkpoint; 1: not running, or no checkpoint confirmed in time; UserError: ambiguous."""
    if name is None:
        runs = live_runs(root)
        if not runs:
            say(f"ddlc stop: no run is running on this machine under {root}/")
            return 1
        if len(runs) > 1:
            raise UserError(f"several runs are running under {root}/: {', '.join(runs)}; name one: ddlc stop RUN")
        name = next(iter(runs))
    run_dir = root / name
    if not run_dir.is_dir():
        raise UserError(f"no run {name!r} under {root}/ (see --run-dir)")
    live = run_files.running(run_dir)
    if not live:
        host = run_files.running_elsewhere(run_dir)
        if host:
            raise UserError(f"run {name} was started on host {host}: run `ddlc stop {name}` there")
        say(f"ddlc stop: run {name} is not running")
        return 1
    role = next(r for r in ORDER if r in live)
    target = live[role]
    asked = time.time()
    say(f"ddlc stop: stopping run {name} (SIGTERM to its {DESCRIPTION[role]}, pid {target.pid}); "
        "waiting for the checkpoint")
    target.send_signal(signal.SIGTERM)
    alive = wait_gone(list(live.values()), timeout)
    if alive:
        say(f"ddlc stop: run {name} still runs after {timeout:.0f} s (pids {', '.join(str(p.pid) for p in alive)})")
        return 1
    summary = _summary(run_dir)
    if summary and summary.get("preempted") and (run_dir / "summary.json").stat().st_mtime >= asked - 1:
        say(f"ddlc stop: run {name} stopped at step {summary['steps']}; checkpoint in "
            f"{summary.get('checkpoint_uri')}. Resume: run the same command again")
        return 0
    if summary and (run_dir / "summary.json").stat().st_mtime >= asked - 1:
        say(f"ddlc stop: run {name} finished at step {summary['steps']} before it could stop")
        return 0
    say(f"ddlc stop: run {name} exited, but wrote no checkpoint confirmation; see its output")
    return 1


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; a zombie (exited, not yet reaped by its parent) counts as exited."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for process in procs:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.Error:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _summary(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
