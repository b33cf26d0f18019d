"""Which checkpoints to delete. Pure logic, so the safety rules are easy to test:

- only runs right after a commit, and never deletes the newest committed checkpoint;
- keeps the newest `keep_last` committed checkpoints, plus every one whose step is a multiple of `keep_every`;
- removes uncommitted (crashed) directories only when they are older than the newest commit.
"""

from __future__ import annotations

from typing import Optional


def select_for_deletion(
    committed: list[int], uncommitted: list[int], keep_last: int, keep_every: Optional[int] = None
) -> list[int]:
    if not committed:
        return []  # nothing is safe to delete until something newer is committed
    newest = max(committed)
    keep = set(sorted(committed)[-max(keep_last, 1):]) | {newest}
    if keep_every:
        keep |= {step for step in committed if step % keep_every == 0}
    doomed = [step for step in committed if step not in keep]
    doomed += [step for step in uncommitted if step < newest]
    return sorted(doomed)
