"""`ddlc health`: is this node fit to train (logic in ddlc.ops.health). Exit 0 healthy, 1 with one line per
failed check, 2 for bad input. `--slurm-drain` also drains/resumes this Slurm node (ddlc.scheduler.drain)."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import Optional

import typer

from ddlc.errors import UserError


def health(
    as_json: bool = typer.Option(False, "--json", help="Print every check (and the verdict) as JSON."),
    expect_gpus: Optional[int] = typer.Option(None, "--expect-gpus", min=0, help="GPUs this node must have "
                                              "(default: DDLC_GPUS_PER_NODE on a cluster worker, else the "
                                              "instance type's)."),
    expect_efa: Optional[int] = typer.Option(None, "--expect-efa", min=0, help="EFA devices this node must have "
                                             "(default: the instance type's)."),
    disk_path: Path = typer.Option(Path("/"), "--disk-path", help="Volume whose free space is checked."),
    min_free_gb: float = typer.Option(10.0, "--min-free-gb", min=0, help="Free space required on --disk-path."),
    reference_time: Optional[float] = typer.Option(None, "--reference-time", help="Epoch seconds of another "
                                                   "clock to compare with (ddlc launch passes its own)."),
    max_skew: float = typer.Option(30.0, "--max-skew", min=0, help="Seconds of clock skew allowed."),
    readings_file: Optional[Path] = typer.Option(None, "--readings", help="Check recorded readings instead of "
                                                 "this node (a file written by --record)."),
    record: Optional[Path] = typer.Option(None, "--record", help="Also write this node's readings here."),
    slurm_drain: bool = typer.Option(False, "--slurm-drain", help="Slurm's HealthCheckProgram: on a failure, drain "
                                     "this node (SLURMD_NODENAME, else the host name) with the first failure as "
                                     "the reason; when healthy, resume it if ddlc health drained it."),
) -> None:
    """Check this node: GPU count, Xid/ECC/row-remap errors, EFA devices, free disk, clock."""
    from ddlc.ops.health import HealthOptions, NodeReadings, failures, report, run_checks, run_health

    if reference_time is not None and not math.isfinite(reference_time):
        # nan/inf would make every skew comparison false: the clock check would pass unchecked
        raise UserError(f"--reference-time {reference_time}: must be a finite number of epoch seconds")
    options = HealthOptions(expect_gpus=expect_gpus, expect_efa=expect_efa, disk_path=disk_path,
                            min_free_gb=min_free_gb, reference_time=reference_time, max_skew_s=max_skew)
    if readings_file is not None:
        readings = _load_readings(readings_file, NodeReadings)
        results = run_checks(readings, options)
    else:
        readings, results = run_health(options)
    if record is not None:
        try:
            record.write_text(readings.to_json())
        except OSError as error:
            raise UserError(f"--record {record}: {error.strerror or error}") from error
    if as_json:
        typer.echo(json.dumps(report(results, socket.gethostname()), indent=2))
    else:
        for failed in failures(results):
            typer.echo(f"UNHEALTHY {failed.line()}")
        if not failures(results):
            typer.echo("healthy: " + "; ".join(r.line() for r in results))
    if slurm_drain:
        from ddlc.scheduler.client import Slurm
        from ddlc.scheduler.drain import apply, node_name

        failed = failures(results)
        typer.echo(apply(Slurm(), node_name(), failed[0].line() if failed else None).line())
    if failures(results):
        raise typer.Exit(1)


def _load_readings(path: Path, cls):
    try:
        return cls.from_dict(json.loads(path.read_text()))
    except OSError as error:
        raise UserError(f"--readings {path}: {error.strerror or error}") from error
    except (ValueError, TypeError) as error:
        raise UserError(f"--readings {path}: not a recorded reading ({str(error).splitlines()[0]})") from error


def register(app: typer.Typer) -> None:
    app.command("health")(health)
