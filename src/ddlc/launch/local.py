"""Start a training job on this machine under torchrun (standalone rendezvous), and summarise it.

    ddlc train ─> plan_local_job (validate, name the run) ─> run_local_job: launcher.json, torchrun in its own
    session (ddlc.launch.torchrun), signals forwarded as one SIGTERM ─> exit code ─> read_summary
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ddlc.config.loader import load_config
from ddlc.config.schema import Config
from ddlc.errors import UserError
from ddlc.launch import run_files
from ddlc.runtime.preflight import check_job, local_device
from ddlc.runtime.run_identity import resolve_config_path, run_name


def default_nproc() -> int:
    """One worker per GPU; two CPU workers when there is no GPU (the demo)."""
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install must not stop a CPU run
        count = 0
    return count or 2


@dataclass
class LocalJob:
    """A resolved local job: validated config plus the exact torchrun command line."""

    config: Config
    command: list[str]
    run_dir: Path
    config_path: Optional[str] = None

    @property
    def run_name(self) -> str:
        return self.run_dir.name


def plan_local_job(
    config_path: Optional[str],
    overrides: Sequence[str],
    nproc: Optional[int] = None,
    python: str = sys.executable,
    max_restarts: int = 0,
) -> LocalJob:
    """Validate the config here (bad input fails before any worker starts) and build the torchrun command."""
    overrides = list(overrides)
    config_path = resolve_config_path(config_path)
    cfg = load_config(config_path, overrides)
    if not cfg.monitoring.run_name:
        # The run's name comes from its config, so the same command finds (and resumes) the same run.
        overrides.append(f"monitoring.run_name={run_name(cfg, config_path)}")
        cfg = load_config(config_path, overrides)
    workers = nproc or default_nproc()
    # Checks that would otherwise fail inside every worker: batch split, data path, output dirs, memory.
    check_job(cfg, workers, workers, local_device(cfg.distributed.device))
    command = [
        python,
        "-m",
        "ddlc.launch.torchrun",  # torchrun's own arguments; clean stops and failures reported in one line
        "--standalone",
        f"--nproc_per_node={workers}",
        f"--max-restarts={max_restarts}",
        # On SIGTERM torchrun gives its workers this long to checkpoint before it kills them (default 30 s).
        f"--shutdown-timeout={int(cfg.distributed.timeout_s)}",
        "-m",
        "ddlc.train",
    ]
    if config_path is not None:
        command += ["--config", str(config_path)]
    command += overrides
    return LocalJob(cfg, command, Path(cfg.monitoring.run_dir) / cfg.monitoring.run_name, config_path)


# Restarted workers must not read the previous attempt's addresses from torchrun's shared rendezvous store
# (pytorch/pytorch#135712: gloo/NCCL init then dials a dead peer). A user's own setting wins.
TORCHRUN_ENV_DEFAULTS = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
KILLED_EXIT_CODE = 128 + signal.SIGINT  # a second Ctrl-C killed the job: no checkpoint of this stop (the shell's 130)


def check_not_running(job: LocalJob) -> None:
    """Two launches of one run would write the same checkpoints: refuse the second."""
    live = run_files.running(job.run_dir)
    if live:
        pid = next(iter(live.values())).pid
        raise UserError(f"run {job.run_name} is already running (pid {pid}); stop it with: ddlc stop {job.run_name}"
                        f" --run-dir {job.run_dir.parent}")
    host = run_files.running_elsewhere(job.run_dir)
    if host:
        raise UserError(f"run {job.run_name}: {job.run_dir} was last run from host {host}; if nothing runs there "
                        f"any more, remove {job.run_dir / run_files.LAUNCHER} and {job.run_dir / run_files.WORKERS}")


def run_local_job(job: LocalJob, on_stop: Optional[Callable[[], None]] = None) -> int:
    """Run torchrun and wait; its workers' output goes straight to this terminal.

    torchrun gets a session of its own, so a Ctrl-C reaches only this process, which turns SIGINT, SIGTERM and
    SIGHUP into one SIGTERM for torchrun: the workers checkpoint and exit 75. A second Ctrl-C kills the job.
    """
    check_not_running(job)
    env = {**TORCHRUN_ENV_DEFAULTS, **os.environ}
    run_files.record_launcher(job.run_dir, job.command)
    previous = {}
    proc: Optional[subprocess.Popen] = None
    stops = 0
    killed = False

    def stop(signum, frame) -> None:
        nonlocal stops, killed
        stops += 1
        if proc is None:
            return
        if stops == 1:
            if on_stop is not None:
                on_stop()
            proc.send_signal(signal.SIGTERM)
        elif signum == signal.SIGINT:
            killed = True
            kill_tree(proc.pid)

    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, stop)
        proc = subprocess.Popen(job.command, env=env, start_new_session=True)
        while True:
            try:
                code = proc.wait()
                # kill_tree reaps torchrun itself, after which wait() can only report 0: say what happened.
                return KILLED_EXIT_CODE if killed else code
            except KeyboardInterrupt:  # only if a handler could not be installed
                stop(signal.SIGINT, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc is not None and proc.poll() is None:
            kill_tree(proc.pid)  # this process is leaving on an exception: leave nothing behind
        run_files.clear(job.run_dir, run_files.LAUNCHER)


def kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.Error:
        return
    for process in procs:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def read_summary(run_dir: Path) -> Optional[dict]:
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def start_new_run(job: LocalJob) -> Optional[Path]:
    """`--new-run`: move the run's directory aside (nothing is deleted) so this launch starts from step 0.

    Returns where the old directory went. A checkpoint.uri outside the run directory cannot be moved from here:
    if it already holds checkpoints, refuse rather than mix two runs in one place.
    """
    check_not_running(job)
    uri = job.config.checkpoint.uri
    if job.config.checkpoint.enabled and uri:
        from ddlc.checkpoint.storage import CheckpointStore

        store = CheckpointStore(uri, job.config.checkpoint.endpoint_url)
        inside = store.scheme == "file" and Path(store.path()).resolve().is_relative_to(job.run_dir.resolve())
        if not inside and any(name.startswith("step-") for name in store.list_dirs()):
            raise UserError(f"--new-run: checkpoint.uri {uri} already holds checkpoints; give the new run another "
                            "checkpoint.uri (or remove those checkpoints)")
    # The memory tier's snapshots of the old run (<memory_dir>/<run name>, this node's shared memory) would be
    # newer than anything the new run has, so its first resume took them: they go aside with the run.
    memory = Path(job.config.checkpoint.memory_dir) / job.run_name
    if not job.run_dir.exists() and not memory.exists():
        return None
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    aside = job.run_dir.with_name(f"{job.run_name}.replaced-{stamp}")
    if job.run_dir.exists():
        job.run_dir.rename(aside)
    if memory.exists():
        aside.mkdir(parents=True, exist_ok=True)
        shutil.move(str(memory), str(aside / "memory-tier"))  # off /dev/shm: frees the memory, keeps the files
    return aside
