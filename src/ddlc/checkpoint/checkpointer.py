"""Sharded, async, atomic, verified checkpoints on top of torch.distributed.checkpoint (DCP).

Save protocol for step N (directory `step-0000000N/` under the checkpoint URI):

1. every rank captures its RNG state (rank 0 also the trainer state) and stages its tensors to memory: this is
   all the training loop waits for (`async_save`). Under DDP each rank stages only its share of the replicated
   tensors, each tensor going to one rank;
2. in the background, each rank writes its RNG file (rank 0 `trainer_state.json`) while DCP writes its shards,
   which are SHA-256 digested as they are written (any file without such a digest is hashed by reading it back);
3. each rank records its files' sizes and digests in a partial manifest;
4. rank 0 waits for all partial manifests, writes `COMMIT` (every file's size + SHA-256) last, then moves the
   `latest` pointer, then applies retention. A directory without `COMMIT` never counts.

Resume: rank 0 picks the newest committed checkpoint that verifies (skipping, with a warning, incomplete or
corrupt ones) and tells the others; all ranks load through DCP, which reshards to the current world size.
"""

from __future__ import annotations

import json
import logging
import time
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from ddlc.checkpoint.manifest import (
    COMMIT,
    LATEST,
    PARTIAL_PREFIX,
    TRAINER_STATE,
    Manifest,
    hash_files,
    parse_step,
    read_manifest,
    step_dir,
    verify,
)
from ddlc.checkpoint.retention import select_for_deletion
from ddlc.checkpoint.state import (
    load_model_and_optimizer_state,
    load_rng_bytes,
    model_and_optimizer_state,
    rng_bytes,
    set_rng_state,
    share_of_replicated_state,
)
from ddlc.checkpoint.storage import CheckpointStore
from ddlc.checkpoint.write_digests import take_write_digests

log = logging.getLogger("ddlc.checkpoint")


def rng_file(rank: int) -> str:
    return f"rng-rank{rank:05d}.pt"


@dataclass
class SaveStats:
    step: int
    blocking_s: float  # time the training loop was held
    total_s: Optional[float] = None  # until committed (rank 0) or own files hashed (other ranks)
    committed: bool = False
    error: Optional[str] = None


class Checkpointer:
    """Save and resume a model + optimizer + trainer state. Usable from any training loop::

        ckpt = Checkpointer("s3://bucket/run", rank=dist.get_rank(), world_size=dist.get_world_size())
        state = ckpt.resume(model, optimizer)          # None on a fresh start
        ...
        ckpt.save(step, model, optimizer, {"step": step}, blocking=False)
        ...
        ckpt.close()
    """

    def __init__(
        self,
        uri: str,
        rank: int = 0,
        world_size: int = 1,
        keep_last: int = 3,
        keep_every: Optional[int] = None,
        commit_timeout_s: float = 600.0,
        endpoint_url: Optional[str] = None,
        warn: Callable[[str], None] = lambda message: log.warning(message),
        on_commit: Optional[Callable[[SaveStats], None]] = None,
    ):
        self.store = CheckpointStore(uri, endpoint_url)
        self.rank = rank
        self.world_size = world_size
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.commit_timeout_s = commit_timeout_s
        self.warn = warn
        self.on_commit = on_commit
        # Async DCP runs collectives from a background thread: give it a group of its own (gloo, CPU) so they
        # never interleave with the training loop's collectives.
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        # The write-and-commit of an async save runs on a daemon thread: if this process dies mid-save, its exit is
        # never held up by a commit that can no longer happen (and no COMMIT is written — as it must be).
        self._pending: Optional[threading.Thread] = None
        self.last_step: Optional[int] = None  # newest step handed to save()
        self._writer = None
        self._staging = None
        self.history: list[SaveStats] = []

    # -- save ------------------------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        trainer_state: dict,
        blocking: bool = False,
    ) -> SaveStats:
        """Checkpoint `step`. With blocking=False, returns once state is staged; the write and commit go on."""
        self.wait()
        directory = step_dir(step)
        started = time.perf_counter()
        if self.rank == 0:
            if read_manifest(self.store, directory) is not None:
                self.store.remove_tree(directory)  # an older commit of this very step (e.g. a rerun): replace it
            elif self.store.exists(directory):
                self.store.remove_tree(directory)  # debris of a save that died part-way
        self._barrier()
        self.store.makedirs(directory)
        # Captured now, written (with their fsyncs) by the background thread while DCP writes the shards.
        small_files = {rng_file(self.rank): rng_bytes()}
        if self.rank == 0:
            state = {**trainer_state, "world_size": self.world_size, "saved_at": time.time()}
            small_files[TRAINER_STATE] = json.dumps(state, indent=2).encode("utf-8")

        app_state = share_of_replicated_state(model_and_optimizer_state(model, optimizer), self.rank,
                                              self.world_size, self.group)
        writer = self._dcp_writer(directory)
        take_write_digests(writer, self.store.path(directory))  # drop any left by an earlier failed save here
        checkpoint_id = self.store.url(directory)
        stats = SaveStats(step=step, blocking_s=0.0)
        self.history.append(stats)
        self.last_step = step
        if blocking:
            dcp.save(app_state, checkpoint_id=checkpoint_id, storage_writer=writer, process_group=self.group)
            stats.blocking_s = time.perf_counter() - started
            self._finish(None, directory, small_files, stats, started)
            return stats
        upload = dcp.async_save(app_state, checkpoint_id=checkpoint_id, storage_writer=writer, process_group=self.group,
                                async_stager=self._stager())
        stats.blocking_s = time.perf_counter() - started
        self._pending = threading.Thread(target=self._finish, args=(upload, directory, small_files, stats, started),
                                         name=f"ddlc-checkpoint-{step}", daemon=True)
        self._pending.start()
        return stats

    def _dcp_writer(self, directory: str):
        if self._writer is None:
            self._writer = self.store.dcp_writer(directory)
        return self._writer

    def _stager(self):
        # One stager for the whole run: it keeps its CPU copies (pinned on GPU hosts) keyed by the source storage,
        # so every save after the first copies into buffers that already exist instead of allocating.
        if self._staging is None:
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            cuda = torch.cuda.is_available()
            self._staging = DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                                         use_async_staging=False, use_non_blocking_copy=False))
        return self._staging

    def _finish(self, upload: Optional[Future], directory: str, small_files: dict[str, bytes], stats: SaveStats,
                started: float) -> None:
        try:
            for name, data in small_files.items():  # before this rank's partial manifest, which hashes them
                self.store.write_bytes_atomic(f"{directory}/{name}", data)
            if upload is not None:
                upload.result()
            self._write_partial_manifest(directory)
            if self.rank == 0:
                self._commit(directory, stats)
                stats.total_s = time.perf_counter() - started
                if self.on_commit is not None:
                    self.on_commit(stats)
        except Exception as exc:  # a failed save must not kill training; the previous commit still stands
            stats.error = f"{type(exc).__name__}: {exc}"
            self.warn(f"checkpoint {self.store.display(directory)} failed and was not committed: {stats.error}")
        finally:
            if stats.total_s is None:
                stats.total_s = time.perf_counter() - started

    def _own_files(self, directory: str) -> dict[str, int]:
        mine = {}
        for info in self.store.list_files(directory):
            name = info.name
            if name.startswith(f"__{self.rank}_") or name == rng_file(self.rank):
                mine[name] = info.size
            elif self.rank == 0 and name in (".metadata", TRAINER_STATE):
                mine[name] = info.size
        return mine

    def _write_partial_manifest(self, directory: str) -> None:
        own = self._own_files(directory)
        # Shards digested while DCP wrote them count when the file on disk still has the size that was digested;
        # everything else is hashed by reading it back.
        written = take_write_digests(self._writer, self.store.path(directory))
        files = {name: digest for name, digest in written.items() if own.get(name) == digest["size"]}
        files.update(hash_files(self.store, directory, sorted(name for name in own if name not in files)))
        self.store.write_text_atomic(f"{directory}/{PARTIAL_PREFIX}{self.rank:05d}.json", json.dumps(files))

    def _commit(self, directory: str, stats: SaveStats) -> None:
        partial_names = [f"{PARTIAL_PREFIX}{r:05d}.json" for r in range(self.world_size)]
        deadline = time.monotonic() + self.commit_timeout_s
        while True:
            present = {f.name for f in self.store.list_files(directory)}
            if all(name in present for name in partial_names):
                break
            if time.monotonic() > deadline:
                missing = [n for n in partial_names if n not in present]
                raise TimeoutError(f"ranks did not finish writing within {self.commit_timeout_s:.0f}s: {missing}")
            time.sleep(0.05)
        files: dict[str, dict] = {}
        for name in partial_names:
            files.update(json.loads(self.store.read_text(f"{directory}/{name}")))
        unlisted = sorted(n for n in present if n not in files and n != COMMIT and not n.startswith(PARTIAL_PREFIX))
        files.update(hash_files(self.store, directory, unlisted))
        trainer_state = json.loads(self.store.read_text(f"{directory}/{TRAINER_STATE}"))
        manifest = Manifest(step=stats.step, files=files, world_size=self.world_size,
                            extra={"trainer_state": trainer_state})
        self.store.write_text_atomic(f"{directory}/{COMMIT}", manifest.to_json())
        self.store.write_text_atomic(LATEST, directory + "\n")
        stats.committed = True
        for name in partial_names:
            try:
                self.store.fs.rm(self.store.path(directory, name))
            except FileNotFoundError:
                pass
        self.apply_retention()

    def apply_retention(self) -> list[str]:
        committed, uncommitted = [], []
        for name in self.store.list_dirs():
            step = parse_step(name)
            if step is None:
                continue
            (committed if read_manifest(self.store, name) is not None else uncommitted).append(step)
        doomed = select_for_deletion(committed, uncommitted, self.keep_last, self.keep_every)
        for step in doomed:
            self.store.remove_tree(step_dir(step))
        return [step_dir(s) for s in doomed]

    def wait(self) -> Optional[SaveStats]:
        """Block until the in-flight save (if any) is written and, on rank 0, committed."""
        if self._pending is None:
            return None
        self._pending.join()
        self._pending = None
        return self.history[-1]

    def _barrier(self) -> None:
        if self.group is not None and self.world_size > 1:
            dist.barrier(group=self.group)

    # -- resume ----------------------------------------------------------------------------------------------
    def latest_valid(self, check_hashes: bool = True, skip: frozenset = frozenset()) -> Optional[str]:
        """Newest committed checkpoint that verifies; warns about each newer one it has to skip."""
        for name in sorted((n for n in self.store.list_dirs() if parse_step(n) is not None), reverse=True):
            if name in skip:
                continue
            result = verify(self.store, name, check_hashes=check_hashes)
            if result.ok:
                return name
            self.warn(f"skipping checkpoint {self.store.display(name)}: {result.summary()}")
        return None

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, check_hashes: bool = True) -> Optional[dict]:
        """Load the newest valid checkpoint into model and optimizer; return its trainer state (None: fresh).

        Rank 0 picks the newest committed checkpoint whose files have their recorded sizes. While DCP loads it, every
        rank SHA-256-checks its share of the files in a thread (one pass over the bytes, overlapped with the load).
        If any file is corrupt, the loaded values are discarded — the next older checkpoint is loaded over every
        tensor — so a corrupt checkpoint never reaches the model.
        """
        rejected: set[str] = set()
        while True:
            chosen = [self.latest_valid(check_hashes=False, skip=frozenset(rejected)) if self.rank == 0 else None]
            if self.group is not None and self.world_size > 1:
                dist.broadcast_object_list(chosen, src=0, group=self.group)
            directory = chosen[0]
            if directory is None:
                return None
            problems: list[str] = []
            checker = None
            if check_hashes:
                checker = threading.Thread(target=lambda: problems.extend(self._check_share(directory)), daemon=True)
                checker.start()
            app_state = model_and_optimizer_state(model, optimizer)
            try:
                dcp.load(app_state, checkpoint_id=self.store.url(directory),
                         storage_reader=self.store.dcp_reader(directory), process_group=self.group)
            except Exception as exc:  # DCP gathers read errors, so every rank lands here together
                problems.append(f"unreadable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            if checker is not None:
                checker.join()
            everyone = self._gather(problems)
            if everyone:
                if self.rank == 0:
                    self.warn(f"skipping checkpoint {self.store.display(directory)}: {'; '.join(everyone)}")
                rejected.add(directory)
                continue
            break
        load_model_and_optimizer_state(model, optimizer, app_state)
        trainer_state = json.loads(self.store.read_text(f"{directory}/{TRAINER_STATE}"))
        trainer_state["checkpoint"] = self.store.display(directory)
        if trainer_state.get("world_size") == self.world_size:
            set_rng_state(load_rng_bytes(self.store.open(f"{directory}/{rng_file(self.rank)}").read()))
        else:
            trainer_state["rng_restored"] = False  # different world size: per-rank streams do not map over
        return trainer_state

    def _check_share(self, directory: str) -> list[str]:
        """SHA-256 of this rank's share of the committed files (every world_size-th file, by name)."""
        manifest = read_manifest(self.store, directory)
        if manifest is None:
            return ["not committed (no valid COMMIT marker)"]
        names = sorted(manifest.files)[self.rank :: self.world_size]
        hashed = hash_files(self.store, directory, names)
        return [f"{name}: sha256 mismatch (corrupted)" for name in names
                if hashed[name]["sha256"] != manifest.files[name]["sha256"]]

    def _gather(self, problems: list[str]) -> list[str]:
        """Every rank's problems, on every rank (one small collective)."""
        if self.group is None or self.world_size == 1:
            return list(problems)
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, problems, group=self.group)
        return [p for rank_problems in gathered for p in rank_problems]

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._staging is not None:
                self._staging.close()
            self._staging = None
            self._writer = None
