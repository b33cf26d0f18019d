"""Lineages: which run a checkpoint belongs to, so two runs never mix in one checkpoint URI.

    fresh start (resume=false, or nothing committed) --new_lineage()--> id stamped into every COMMIT it writes
    resume from step-N --> continue step-N's lineage (unstamped, older checkpoints: a new id; None counts as own)

A fresh start in a URI that already holds committed checkpoints (another lineage) either refuses, naming the URI
(`checkpoint.on_existing: refuse`, the default), or first moves every step directory and `latest` into
`<uri>/previous-<UTC time>/` (`move_aside`), where nothing reads or prunes them. It never writes next to them:
retention would otherwise rank the old run's higher steps above the new run's checkpoints.
"""

from __future__ import annotations

import time
import uuid

from ddlc.checkpoint.manifest import COMMIT, LATEST, parse_step
from ddlc.checkpoint.storage import CheckpointStore
from ddlc.errors import UserError

ON_EXISTING = ("refuse", "move_aside")


def new_lineage() -> str:
    return uuid.uuid4().hex[:16]


def committed_dirs(store: CheckpointStore) -> list[str]:
    """Step directories that hold a COMMIT (readable or not): another run's work."""
    found = []
    for name in store.list_dirs():
        if parse_step(name) is not None and store.exists(f"{name}/{COMMIT}"):
            found.append(name)
    return found


def prepare_fresh_start(store: CheckpointStore, on_existing: str) -> str:
    """Make `store` ready for a new lineage (see the module docstring); returns a one-line note of what was done
    ("" when the URI held no committed checkpoint). Raises UserError when refusing."""
    if on_existing not in ON_EXISTING:
        raise UserError(f"checkpoint.on_existing: {on_existing!r} is not one of {', '.join(ON_EXISTING)}")
    committed = committed_dirs(store)
    if not committed:
        return ""
    if on_existing == "refuse":
        raise UserError(
            f"checkpoint.uri {store.display()} already holds {len(committed)} committed checkpoint(s) of another "
            f"run (newest by name: {max(committed)}) and this run starts fresh (checkpoint.resume=false); refusing "
            "to mix them. Resume it (checkpoint.resume=true), use another checkpoint.uri, or set "
            "checkpoint.on_existing=move_aside to move them aside first")
    aside = f"previous-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:4]}"
    moved = [name for name in store.list_dirs() if parse_step(name) is not None]
    for name in moved:
        store.move(name, f"{aside}/{name}")
    if store.exists(LATEST):
        store.move(LATEST, f"{aside}/{LATEST}")
    return f"moved {len(moved)} checkpoint director(ies) of the previous run aside to {store.display(aside)}"
