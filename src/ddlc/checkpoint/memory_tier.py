"""The host-memory checkpoint tier: frequent snapshots in host shared memory, for a restart in seconds.

    every checkpoint.memory_interval_steps steps (not a storage-checkpoint step):
        a second Checkpointer, rooted at <memory_dir>/<run name>/ (default /dev/shm/ddlc/...), saves the same state
        a storage checkpoint holds, the same way: async staging copy, DCP shards digested as written, manifest +
        COMMIT by rank 0, keep_last=2. A torn or corrupt snapshot is never loaded (same verification as storage).
    resume (Trainer.resume):
        rank 0 peeks storage's newest committed step S; the memory tier loads its newest snapshot of a step > S that
        verifies (a corrupt one: the next older one); none --> storage resume as before, and stale snapshots go.
    bounds: at start, 3 x the state's bytes (two kept + one being written) must fit in memory_dir's free space,
        else exit 2 with the numbers; a write that runs out of space at run time turns the tier off (one warning)
        and training goes on with storage checkpoints.

Survives: a worker or whole-job restart on the same node (torchrun --max-restarts, a crash, a kill -9). Does not
survive the node (or its memory) going away: there is no peer replica yet. The tier is single-node only.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ddlc.checkpoint.checkpointer import Checkpointer, SaveStats
from ddlc.checkpoint.manifest import parse_step
from ddlc.errors import UserError

# Kept snapshots plus the one being written before retention removes the oldest.
SNAPSHOTS_AT_PEAK = 3
HEADROOM = 0.9  # at most this share of the free space


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use in the filesystem holding `path`."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


PER_TENSOR_BYTES = 4096  # a DCP shard file's own bytes around each tensor (generous)
PER_RANK_BYTES = 64 << 10  # a rank's RNG file, plus its part of .metadata, COMMIT and trainer_state.json


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, world_size: int) -> int:
    """Estimated bytes of one snapshot of the whole job, on the generous side: every model state-dict entry (tied
    weights count twice, as DCP writes them), optimizer state (AdamW's two moments per parameter when it has not
    stepped yet), an allowance per tensor and per rank. DDP replicas are written once in all; FSDP shards (DTensors)
    once per rank."""
    def local(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to_local() if hasattr(tensor, "to_local") else tensor

    sharded = any(hasattr(p, "to_local") for p in model.parameters())
    entries = [local(t) for t in model.state_dict().values() if isinstance(t, torch.Tensor)]
    params = sum(local(p).numel() * local(p).element_size() for p in model.parameters())
    optim = [local(v) for entry in optimizer.state.values() for v in entry.values() if isinstance(v, torch.Tensor)]
    total = sum(t.numel() * t.element_size() for t in entries) + len(entries) * PER_TENSOR_BYTES
    if optim:
        total += sum(t.numel() * t.element_size() for t in optim) + len(optim) * PER_TENSOR_BYTES
    else:
        count = sum(1 for _ in model.parameters())
        total += 2 * params + 3 * count * PER_TENSOR_BYTES  # exp_avg, exp_avg_sq, step
    return (total * world_size if sharded else total) + world_size * PER_RANK_BYTES


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _out_of_space(error: Optional[str]) -> bool:
    return bool(error) and ("No space left" in error or f"Errno {errno.ENOSPC}" in error)


class MemoryTier:
    """One per job and rank; every call is made by every rank at the same step (the saves agree like storage's)."""

    def __init__(self, memory_dir: str, run_name: str, interval_steps: int, rank: int, world_size: int,
                 warn: Callable[[str], None], commit_timeout_s: float, load_timeout_s: Optional[float] = None):
        self.root = Path(memory_dir).expanduser().absolute()
        self.path = self.root / run_name
        self.interval_steps = interval_steps
        self.rank = rank
        self.world_size = world_size
        self._warn = warn
        self.enabled = True
        self.saves = 0
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"checkpoint.memory_dir {self.root}: cannot create {self.path}: "
                            f"{error.strerror or error}") from None

        def quiet_warn(message: str) -> None:
            if not _out_of_space(message):  # reported once, in its own words, by _check_space
                warn(f"memory tier: {message}")

        self.checkpointer = Checkpointer(str(self.path), rank=rank, world_size=world_size, keep_last=2,
                                         commit_timeout_s=commit_timeout_s, load_timeout_s=load_timeout_s,
                                         warn=quiet_warn, private_store=True)

    # -- sizing ------------------------------------------------------------------------------------------------
    def check_fits(self, snapshot_bytes: int) -> int:
        """Raise UserError (exit 2) on every rank when SNAPSHOTS_AT_PEAK snapshots do not fit in memory_dir (rank
        0 measures, so every rank has the same verdict); returns the need."""
        need = SNAPSHOTS_AT_PEAK * snapshot_bytes
        verdict = [self._fit_problem(need, snapshot_bytes) if self.rank == 0 else None]
        if self.checkpointer.group is not None and self.world_size > 1:
            dist.broadcast_object_list(verdict, src=0, group=self.checkpointer.group)
        if verdict[0]:
            raise UserError(verdict[0])
        return need

    def _fit_problem(self, need: int, snapshot_bytes: int) -> Optional[str]:
        free = free_bytes(str(self.path))
        # Snapshots of this very run already there are replaced as the tier runs: their space counts as free.
        free += sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        if need > HEADROOM * free:
            return (
                f"checkpoint.memory_interval_steps: the memory tier needs {_mib(need)} ({SNAPSHOTS_AT_PEAK} x "
                f"{_mib(snapshot_bytes)} of model and optimizer state: two kept snapshots and one being written) "
                f"but checkpoint.memory_dir {self.root} has {_mib(free)} free (at most {HEADROOM:.0%} of it is "
                f"used); point checkpoint.memory_dir at a larger tmpfs, or set checkpoint.memory_interval_steps "
                f"to null to turn the tier off")
        return None

    # -- saving ------------------------------------------------------------------------------------------------
    def due(self, step: int, storage_interval: int) -> bool:
        return self.enabled and step % self.interval_steps == 0 and step % storage_interval != 0

    def save(self, step: int, model, optimizer, trainer_state: dict) -> Optional[SaveStats]:
        """Async snapshot of `step` (returns once the staging copy has started); None when the tier is off."""
        self._check_space()
        if not self.enabled:
            return None
        self.saves += 1
        return self.checkpointer.save(step, model, optimizer, trainer_state, blocking=False)

    def _check_space(self) -> None:
        """After the previous snapshot ended: if it ran out of space on any rank, turn the tier off (all ranks)."""
        previous = self.checkpointer.wait()
        full = torch.tensor([1 if previous is not None and _out_of_space(previous.error) else 0])
        if self.checkpointer.group is not None and self.world_size > 1:
            dist.all_reduce(full, op=dist.ReduceOp.MAX, group=self.checkpointer.group)
        if full.item():
            self.enabled = False
            if self.rank == 0:
                self._warn(f"memory tier: {self.path} ran out of space (snapshot of step {previous.step}: "
                           f"{previous.error}); the tier is off for the rest of this run, training goes on with "
                           f"storage checkpoints (raise the tmpfs size or lower the model's state)")
                self.discard()

    # -- resume ------------------------------------------------------------------------------------------------
    def resume(self, storage: Checkpointer, model, optimizer, check_hashes: bool) -> Optional[dict]:
        """Load the newest verified snapshot newer than storage's newest checkpoint; None: resume from storage.

        When a snapshot is loaded, the storage checkpointer continues storage's lineage and commit order (rank 0)."""
        peek = None
        after = -1
        if self.rank == 0:
            try:
                peek = storage.peek()
                after = parse_step(peek.directory) if peek.directory else -1
            except Exception:  # noqa: BLE001 (storage unreadable: storage's own resume reports it)
                peek = None
        restored = self.checkpointer.resume(model, optimizer, check_hashes=check_hashes, after_step=after)
        if restored is None:
            return None
        if self.rank == 0 and peek is not None:
            from ddlc.checkpoint.lineage import new_lineage

            storage.lineage = peek.lineage or new_lineage()
            storage._last_seq = peek.highest_seq
        return restored

    def discard(self) -> None:
        """Rank 0: remove every snapshot of this run (stale after a storage resume, or after the final save)."""
        if self.rank != 0:
            return
        for child in list(self.path.iterdir()) if self.path.exists() else []:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    def close(self) -> None:
        self.checkpointer.close()
