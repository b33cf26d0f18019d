"""Who is running a run, written into its run directory, so `ddlc stop RUN` and a second launch can find them.

    runs/<run>/launcher.json   `ddlc train`: its pid (+ start time), host, command          (removed at its exit)
    runs/<run>/workers.json    rank 0: its pid and its launcher's agent pid (torchrun)     (removed at the end)

A record names a live process only if a process with that pid exists on this host and started at the recorded
time, so a stale file after kill -9, or a reused pid, never gets a signal.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Optional

import psutil

LAUNCHER = "launcher.json"
WORKERS = "workers.json"

# The line rank 0 prints after a clean stop; `ddlc launch` reads it from the nodes' output to report the step.
# (The older "stopped by signal at step N" form is still read from nodes running an older ddlc.)
STOPPED_LINE = re.compile(r"ddlc: (?:run \S+ )?stopped (?:by signal|\([^)]*\)) at step (\d+)")


def stopped_line(run_name: str, reason: str, step: int) -> str:
    return (f"ddlc: run {run_name} stopped ({reason}) at step {step}; checkpoint saved. "
            "Resume: run the same command again")


def process_record(pid: int) -> Optional[dict]:
    try:
        return {"pid": pid, "started": psutil.Process(pid).create_time()}
    except psutil.Error:
        return None


def live_process(record: Optional[dict], host: Optional[str] = None) -> Optional[psutil.Process]:
    if not record or (host is not None and host != socket.gethostname()):
        return None
    try:
        process = psutil.Process(int(record["pid"]))
        if abs(process.create_time() - float(record["started"])) > 1.0 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _read(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_launcher(run_dir: Path, command: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _write(run_dir / LAUNCHER, {"host": socket.gethostname(), "process": process_record(os.getpid()),
                                "command": command})


def record_workers(run_dir: Path) -> None:
    """On rank 0 at the start of training: this process, and torchrun's agent when it is our parent."""
    data = {"host": socket.gethostname(), "rank0": process_record(os.getpid())}
    if "TORCHELASTIC_RUN_ID" in os.environ:
        data["agent"] = process_record(os.getppid())
    _write(run_dir / WORKERS, data)


def clear(run_dir: Path, name: str) -> None:
    try:
        (run_dir / name).unlink()
    except FileNotFoundError:
        pass


def clear_workers(run_dir: Path) -> None:
    clear(run_dir, WORKERS)


def running(run_dir: Path) -> dict[str, psutil.Process]:
    """The live processes of this run on this host: any of "launcher", "agent", "rank0"."""
    found: dict[str, psutil.Process] = {}
    launcher = _read(run_dir / LAUNCHER) or {}
    process = live_process(launcher.get("process"), launcher.get("host"))
    if process is not None:
        found["launcher"] = process
    workers = _read(run_dir / WORKERS) or {}
    for role in ("agent", "rank0"):
        process = live_process(workers.get(role), workers.get("host"))
        if process is not None:
            found[role] = process
    return found


def running_elsewhere(run_dir: Path) -> Optional[str]:
    """The host named by a run file when it is not this one (its processes cannot be checked from here)."""
    for name in (LAUNCHER, WORKERS):
        host = (_read(run_dir / name) or {}).get("host")
        if host and host != socket.gethostname():
            return host
    return None


def set_metrics_aside(path: Path) -> Optional[Path]:
    """A run that starts from step 0 where step records already are (checkpoint.resume=false, or every checkpoint
    moved aside) would append its steps after the old ones, each step twice: the old records go aside, kept."""
    try:
        if path.stat().st_size == 0:
            return None
    except FileNotFoundError:
        return None
    from datetime import datetime, timezone

    aside = path.with_name(f"{path.name}.replaced-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    return aside


def truncate_metrics(path: Path, step: int) -> int:
    """Drop records after `step` (they are trained again on resume); returns how many were dropped."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record_step = int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError, TypeError):
            dropped += 1  # unreadable (a torn last line after kill -9): not a step record
            continue
        if record_step > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return dropped
