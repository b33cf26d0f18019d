"""`ddlc submit`: check a training job against the cluster, write its batch script, hand it to sbatch.

    script + args ──> run name, run directory, checkpoint location (train.py's own argument and config parsing)
         │            + the batch plan checked for nodes x workers per node (ddlc.launch.jobcheck)
    --nodes/--partition/--time ──> checked against sinfo: an unknown partition, more nodes than it has,
         │                         a time sbatch would misread or no Slurm at all: exit 2, one line, nothing queued
         │                         (and squeue: the run must not have a job pending or running already)
         v
    <run dir>/<run name>/slurm-job.sbatch (ddlc.scheduler.sbatch) ──sbatch──> job id
    <run dir>/<run name>/slurm-jobs.json   job id -> what `ddlc jobs` needs (checkpoint location, nodes, price)

The run name is pinned in the script (`monitoring.run_name=`): a requeued job is the same run and resumes from its
newest checkpoint, even if config.yaml was edited meanwhile.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ddlc.errors import UserError
from ddlc.scheduler.client import Slurm
from ddlc.scheduler.sbatch import JobRequest, parse_time, render_script

BOOKKEEPING = "slurm-jobs.json"
# squeue states in which a job still owns (or will own) its run directory.
ACTIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")


@dataclass(frozen=True)
class RunInfo:
    name: str
    directory: Path  # absolute
    checkpoint_uri: Optional[str]  # None: not a ddlc train.py job, or checkpoints off
    endpoint_url: Optional[str] = None
    pinned_args: tuple[str, ...] = ()  # the script's arguments, with the run name pinned when train.py's


def run_info(script: str, script_args: Sequence[str], workdir: Path) -> RunInfo:
    """What run a job is: train.py's run name and checkpoint location, else the script's name under ./runs."""
    from ddlc.launch.jobcheck import is_ddlc_train_script

    path = Path(script) if Path(script).is_absolute() else workdir / script
    if not path.is_file():
        raise UserError(f"script {script}: no such file (in {workdir})")
    if not is_ddlc_train_script(path):
        name = path.stem or "job"
        return RunInfo(name, workdir / "runs" / name, None, pinned_args=tuple(script_args))
    from ddlc.config.loader import load_config
    from ddlc.runtime.entry import build_parser, config_arguments
    from ddlc.runtime.run_identity import resolve_config_path, run_name

    args, _ = build_parser().parse_known_args(list(script_args))
    config_path, overrides = config_arguments(args)
    config_path = resolve_config_path(config_path, workdir)
    readable = config_path if config_path is None or os.path.isabs(config_path) else str(workdir / config_path)
    cfg = load_config(readable, overrides)
    name = run_name(cfg, config_path)
    directory = Path(cfg.monitoring.run_dir)
    directory = (directory if directory.is_absolute() else workdir / directory) / name
    uri = None
    if cfg.checkpoint.enabled:
        uri = cfg.checkpoint.uri or str(directory / "checkpoints")
        if "://" not in uri and not os.path.isabs(uri):
            uri = str(workdir / uri)
    pinned = tuple(script_args) if cfg.monitoring.run_name else (*script_args, f"monitoring.run_name={name}")
    return RunInfo(name, directory, uri, cfg.checkpoint.endpoint_url, pinned)


def check_cluster(slurm: Slurm, nodes: int, partition: Optional[str]) -> str:
    """The partition the job goes to, after checking it exists and has `nodes` nodes."""
    partitions = slurm.partitions()  # raises SlurmUnavailable (exit 2) when there is no Slurm
    name = partition or slurm.default_partition()
    if name is None:
        raise UserError("no --partition given and the cluster has no default partition; choose one of "
                        + ", ".join(sorted(partitions)))
    if name not in partitions:
        raise UserError(f"--partition {name!r}: no such partition (the cluster has: {', '.join(sorted(partitions))})")
    if nodes > partitions[name].nodes:
        raise UserError(f"--nodes {nodes}: partition {name!r} has {partitions[name].nodes} node"
                        f"{'s' if partitions[name].nodes != 1 else ''}")
    return name


@dataclass(frozen=True)
class Submission:
    request: JobRequest
    run: RunInfo
    script_text: str


def plan_submission(script: str, script_args: Sequence[str], nodes: int, gpus_per_node: int = 0,
                    time_limit: Optional[str] = None, partition: Optional[str] = None,
                    workdir: Optional[Path] = None, python: str = sys.executable,
                    extra_sbatch: Sequence[str] = ()) -> Submission:
    """Everything that can be checked without Slurm: the script, the time, the training job's config."""
    workdir = (workdir or Path.cwd()).absolute()
    if nodes < 1:
        raise UserError(f"--nodes {nodes}: must be at least 1")
    if gpus_per_node < 0:
        raise UserError(f"--gpus-per-node {gpus_per_node}: must be 0 or more")
    if time_limit is not None:
        parse_time(time_limit)
    local = Path(script) if Path(script).is_absolute() else workdir / script
    if not local.is_file():
        raise UserError(f"script {script}: no such file (in {workdir})")
    from ddlc.launch.jobcheck import check_training_job, is_ddlc_train_script

    if is_ddlc_train_script(local):
        _config_must_exist(script_args, workdir)
    # train.py's arguments and config, and its batch for nodes x workers per node (one line, exit 2 if wrong)
    check_training_job(script, list(script_args), nodes * (gpus_per_node or 1), str(workdir))
    run = run_info(script, script_args, workdir)
    request = JobRequest(nodes=nodes, script=script, script_args=run.pinned_args, run_name=run.name,
                         output_dir=str(run.directory), workdir=str(workdir), gpus_per_node=gpus_per_node,
                         time=time_limit, partition=partition, python=python, extra_sbatch=tuple(extra_sbatch))
    return Submission(request, run, render_script(request))


def _config_must_exist(script_args: Sequence[str], workdir: Path) -> None:
    """The job's --config is read here, at submit, from the directory the nodes share: it must exist now (ddlc
    launch lets the nodes check a file the launching host lacks; a submitted job has no such case)."""
    import contextlib
    import io

    from ddlc.runtime.entry import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args, _ = build_parser().parse_known_args(list(script_args))
    except SystemExit:
        return  # bad arguments: check_training_job says which, in one line
    if args.config is not None:
        path = Path(args.config) if Path(args.config).is_absolute() else workdir / args.config
        if not path.is_file():
            raise UserError(f"--config {args.config}: no such file (in {workdir}, the job's working directory)")


def submit(submission: Submission, slurm: Slurm, instance_type: Optional[str] = None) -> str:
    """Check against the cluster, write the script and the bookkeeping, sbatch; returns the job id."""
    request = submission.request
    partition = check_cluster(slurm, request.nodes, request.partition)
    directory = submission.run.directory
    for row in slurm.jobs():  # every user's: two jobs writing one run's checkpoints would corrupt each other
        if row.comment == f"ddlc:{directory}" and row.state in ACTIVE_STATES:
            raise UserError(f"run {submission.run.name} already has job {row.job_id} ({row.state}); wait for it, "
                            f"cancel it (`ddlc jobs cancel {row.job_id}`) or set another monitoring.run_name")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        script_path = directory / "slurm-job.sbatch"
        script_path.write_text(submission.script_text)
    except OSError as error:
        raise UserError(f"cannot write the batch script in {directory}: {error.strerror or error}") from None
    job_id = slurm.submit(str(script_path))
    record_job(directory, job_id, {"run": submission.run.name, "checkpoint_uri": submission.run.checkpoint_uri,
                                   "endpoint_url": submission.run.endpoint_url, "nodes": request.nodes,
                                   "gpus_per_node": request.gpus_per_node, "partition": partition,
                                   "instance_type": instance_type, "submitted": time.time()})
    return job_id


def record_job(directory: Path, job_id: str, info: dict) -> None:
    path = directory / BOOKKEEPING
    jobs = read_jobs(directory)
    jobs[job_id] = info
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(jobs, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_jobs(directory: Path) -> dict:
    try:
        data = json.loads((directory / BOOKKEEPING).read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: `ddlc jobs` then shows '-' for what it would have told
    return data if isinstance(data, dict) else {}
