"""`ddlc jobs`: Slurm's view of the user's jobs, with what only ddlc knows added.

    squeue (state, nodes, elapsed, nodes or pending reason, comment "ddlc:<run dir>")
      + <run dir>/slurm-jobs.json (ddlc.scheduler.submit): checkpoint location, instance type
      + the newest committed checkpoint step there (ddlc.checkpoint.catalog)
      + cost so far = price per node-hour (ddlc.monitor.pricing) x nodes x elapsed; '-' when the price is unknown
    -> one row per job

Jobs not submitted by ddlc are listed too, with '-' where ddlc has nothing to add.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ddlc.errors import UserError
from ddlc.scheduler.client import JobRow, Slurm, elapsed_seconds
from ddlc.scheduler.submit import read_jobs

COMMENT_PREFIX = "ddlc:"


@dataclass(frozen=True)
class JobView:
    row: JobRow
    run: str
    checkpoint_step: Optional[int]
    cost_usd: Optional[float]

    def cells(self) -> list[str]:
        r = self.row
        step = "-" if self.checkpoint_step is None else str(self.checkpoint_step)
        cost = "-" if self.cost_usd is None else f"${self.cost_usd:,.2f}"
        return [r.job_id, self.run, r.state, str(r.nodes), r.elapsed, step, cost, r.nodelist]


HEADER = ["JOB", "RUN", "STATE", "NODES", "ELAPSED", "CKPT_STEP", "COST", "NODELIST(REASON)"]


def newest_checkpoint_step(uri: Optional[str], endpoint_url: Optional[str] = None) -> Optional[int]:
    if not uri:
        return None
    from ddlc.checkpoint.catalog import list_checkpoints, open_store

    try:
        store = open_store(uri, endpoint_url, must_exist=False)
        steps = [row.step for row in list_checkpoints(store) if row.committed]
    except Exception:  # noqa: BLE001 (unreachable bucket, permissions: the listing still shows the job)
        return None
    return max(steps) if steps else None


def cost_so_far(instance_type: Optional[str], nodes: int, elapsed: str) -> Optional[float]:
    if not instance_type or nodes < 1:
        return None
    from ddlc.monitor.pricing import estimate_cost_usd, load_price_table

    try:
        table = load_price_table()
    except UserError:
        return None
    if instance_type not in table:
        return None
    return estimate_cost_usd(table[instance_type], nodes, elapsed_seconds(elapsed))


def view(row: JobRow) -> JobView:
    info: dict = {}
    if row.comment.startswith(COMMENT_PREFIX):
        info = read_jobs(Path(row.comment[len(COMMENT_PREFIX):])).get(row.job_id) or {}
    step = newest_checkpoint_step(info.get("checkpoint_uri"), info.get("endpoint_url"))
    instance = info.get("instance_type")
    return JobView(row, info.get("run") or row.name, step, cost_so_far(instance if isinstance(instance, str) else None,
                                                                      row.nodes, row.elapsed))


def list_jobs(slurm: Slurm, user: Optional[str] = None, all_users: bool = False) -> list[JobView]:
    import getpass

    owner = None if all_users else (user or getpass.getuser())
    return [view(row) for row in slurm.jobs(owner)]


def table(views: list[JobView]) -> str:
    rows = [HEADER] + [v.cells() for v in views]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)
