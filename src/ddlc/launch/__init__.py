"""Launching jobs: locally under torchrun now; multi-node engines plug in beside it."""

from ddlc.launch.local import LocalJob, default_nproc, plan_local_job, read_summary, run_local_job

__all__ = ["LocalJob", "default_nproc", "plan_local_job", "read_summary", "run_local_job"]
