"""Which checkpoints to delete. Pure logic over what a scan of the store found (catalog.scan), so the safety rules
are easy to test; the same plan serves retention after each commit and `ddlc checkpoints prune`.

    entries (name, step, state, commit order, lineage) --plan()--> [Decision(name, delete?, why)]

States: `verified` (committed, files have their recorded size, or SHA-256 with --verify), `corrupt` (committed,
files do not match), `unreadable` (COMMIT malformed), `uncommitted` (no COMMIT: a save in flight or debris).

Rules:
- "newer" is commit order (the manifest's seq, then commit time, then step), never the step number alone: a run
  that resumed from step 20 because step 30 was corrupt writes 24, which is newer than 30;
- keep the newest `keep_last` verified checkpoints, plus every verified one whose step is a multiple of
  `keep_every`, plus each `protect`ed one (the checkpoint this job resumed from) until a newer one has verified;
- nothing is deleted while no checkpoint verifies;
- a corrupt checkpoint is deleted only when it is older than the newest verified one (it can never be loaded);
  newer corrupt ones stay, for a person to look at; unreadable ones always stay (maybe a newer format);
- uncommitted directories are deleted only below the step of the newest verified checkpoint (a live job's
  in-flight save is always above its own last commit);
- checkpoints of another lineage (another run in the same URI) are never touched by a job's retention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

VERIFIED, CORRUPT, UNREADABLE, UNCOMMITTED = "verified", "corrupt", "unreadable", "uncommitted"


@dataclass
class Entry:
    name: str
    step: int
    state: str
    order: Optional[tuple] = None  # Manifest.order, for committed (verified or corrupt) checkpoints
    lineage: Optional[str] = None
    problem: Optional[str] = None


@dataclass
class Decision:
    entry: Entry
    delete: bool
    why: str


def plan(entries: list[Entry], keep_last: int, keep_every: Optional[int] = None, protect: Iterable[str] = (),
         own_lineages: Optional[set] = None) -> list[Decision]:
    """A decision for every entry, oldest first. `own_lineages`: None for all (prune), else the lineages a job
    may delete from (its own, and None for unstamped checkpoints)."""
    protect = set(protect)

    def own(entry: Entry) -> bool:
        return own_lineages is None or entry.lineage in own_lineages

    verified = sorted((e for e in entries if e.state == VERIFIED and own(e)), key=lambda e: e.order, reverse=True)
    newest = verified[0] if verified else None
    kept_newest = {e.name for e in verified[:max(keep_last, 1)]}
    decisions = []
    for entry in entries:
        if entry.state == UNREADABLE:
            decisions.append(Decision(entry, False, f"unreadable, kept for inspection ({entry.problem})"))
        elif entry.state == UNCOMMITTED:
            if newest is not None and entry.step < newest.step:
                decisions.append(Decision(entry, True, "debris of a save that never committed"))
            else:
                decisions.append(Decision(entry, False, "uncommitted (a save in flight, or newer than any verified)"))
        elif not own(entry):
            decisions.append(Decision(entry, False, f"another run's checkpoint (lineage {entry.lineage})"))
        elif newest is None:
            decisions.append(Decision(entry, False, "no checkpoint verifies: nothing is deleted"))
        elif entry.name in protect and entry.order >= newest.order:
            decisions.append(Decision(entry, False, "resumed from, and no newer checkpoint has verified yet"))
        elif entry.state == CORRUPT:
            if entry.order < newest.order:
                decisions.append(Decision(entry, True, f"does not verify ({entry.problem}); a newer one does"))
            else:
                decisions.append(Decision(entry, False, f"does not verify ({entry.problem}), kept for inspection: "
                                                        "newer than the newest verified checkpoint"))
        elif entry.name in kept_newest:
            decisions.append(Decision(entry, False, "newest verified" if entry is newest else f"within keep_last={keep_last}"))
        elif keep_every and entry.step % keep_every == 0:
            decisions.append(Decision(entry, False, f"step is a multiple of keep_every={keep_every}"))
        else:
            decisions.append(Decision(entry, True, f"older than the newest {keep_last} verified"))
    return sorted(decisions, key=lambda d: (d.entry.order or (-1,), d.entry.step))


def select_for_deletion(committed: list[int], uncommitted: list[int], keep_last: int,
                        keep_every: Optional[int] = None) -> list[int]:
    """Steps to delete, for verified checkpoints ordered by step (the simple case of `plan`)."""
    entries = [Entry(f"{s}", s, VERIFIED, order=(0, 0.0, s)) for s in committed]
    entries += [Entry(f"u{s}", s, UNCOMMITTED) for s in uncommitted]
    return sorted(d.entry.step for d in plan(entries, keep_last, keep_every) if d.delete)
