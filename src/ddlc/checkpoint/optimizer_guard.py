"""Resume must restore the optimizer, or say it could not: never continue silently with a fresh one.

    save:   trainer_state["optimizer_state_entries"] = optimizer_state_entries(optimizer)   (rank 0)
    resume: load -> check_optimizer_restored(optimizer, trainer_state, group)              (every rank, one all-reduce)

Why: a fresh AdamW after a restored model trains on, with losses that look plausible, but every update from then
on differs (Horovod did exactly this, issue #13). The loaders can skip optimizer state without an error — DCP only
fills entries the live optimizer already has — so the check looks at the result, for every engine.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist

from ddlc.errors import UserError


class OptimizerNotRestored(UserError):
    """The checkpoint had optimizer state and the resumed optimizer has none: continuing would lose it."""

    exit_code = 1  # a fault in the resume, not bad input


def optimizer_state_entries(optimizer: Any) -> int:
    """How many parameters have optimizer state (AdamW: exp_avg...). Engines' wrappers expose `.state` too."""
    for candidate in (optimizer, getattr(optimizer, "optimizer", None)):
        state = getattr(candidate, "state", None)
        if isinstance(state, Mapping):
            return sum(1 for value in state.values() if value)
    return 0


def check_optimizer_restored(optimizer: Any, trainer_state: Mapping[str, Any], group: Optional[object] = None,
                             checkpoint: str = "the checkpoint") -> None:
    """Raise OptimizerNotRestored on every rank if any rank's optimizer is empty although the checkpoint was not.

    Checkpoints written before the count was recorded: any saved step > 0 of an optimizer that keeps state had
    state (AdamW keeps it from its first step).
    """
    saved = trainer_state.get("optimizer_state_entries")
    if saved is None:
        saved = 1 if trainer_state.get("step", 0) > 0 else 0
    if not saved:
        return
    empty = torch.tensor([0 if optimizer_state_entries(optimizer) else 1], dtype=torch.int32)
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(empty, op=dist.ReduceOp.MAX, group=group)  # every rank decides the same, nobody hangs
    if empty.item():
        raise OptimizerNotRestored(
            f"resume from {checkpoint}: the optimizer state was not restored (the checkpoint has it for "
            f"{saved} parameters, the optimizer has none on at least one rank); refusing to continue with a fresh "
            "optimizer. This is a bug in the engine's resume: please report it"
        )
