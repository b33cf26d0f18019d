"""Sharded, async, atomic, verified checkpoints on top of torch.distributed.checkpoint (DCP).

Save protocol for step N (directory `step-0000000N/` under the checkpoint URI):

1. in `save()`, every rank captures its RNG state (rank 0 also the trainer state), takes views of the model and
   optimizer state and copies the buffers; under DDP each rank keeps only its share of the replicated tensors,
   each tensor going to one rank. That is all the training loop waits for;
2. in the background, the state is copied to reused CPU buffers while the loop runs the next forward/backward; the
   optimizer's next `step()` waits for that copy (a pre-step hook registered by `save()`);
3. each rank writes its RNG file (rank 0 `trainer_state.json`) while DCP writes its shards, which are SHA-256
   digested as they are written (any file without such a digest is hashed by reading it back);
4. every rank sends its files' sizes and digests to rank 0 (one collective), which writes `COMMIT` (every file's
   size + SHA-256) last, then moves the `latest` pointer, then applies retention. A directory without `COMMIT`
   never counts.

Resume: rank 0 picks the newest committed checkpoint whose files have their recorded sizes and tells the others;
all ranks load through DCP, which reshards to the current world size, each SHA-256-checking its share of the files
(from the bytes it loaded, on local storage); a corrupt or undecodable checkpoint makes them load the next older one.
"""

from __future__ import annotations

import json
import logging
import os
import time
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from ddlc.checkpoint.manifest import (
    COMMIT,
    LATEST,
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
    snapshot_buffers,
    assign_replicated_share,
    balance_by_size,
    layouts_agree,
    replicated_layout,
)
from ddlc.checkpoint.storage import CheckpointStore
from ddlc.checkpoint.write_digests import take_write_digests

log = logging.getLogger("ddlc.checkpoint")


def default_io_threads(limit: int = 4) -> int:
    """CPU cores per local rank (LOCAL_WORLD_SIZE from the launcher), between 1 and `limit`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(limit, cores // max(1, local_ranks)))


def rng_file(rank: int) -> str:
    return f"rng-rank{rank:05d}.pt"


@dataclass
class SaveStats:
    step: int
    blocking_s: float  # time the training loop was held: inside save() plus any wait for staging to finish
    total_s: Optional[float] = None  # until committed (rank 0) or own files written and digested (other ranks)
    committed: bool = False
    error: Optional[str] = None
    retention_s: Optional[float] = None  # rank 0: deleting what retention selected, after the commit
    # Seconds from the start of save() to the end of each phase of this rank's save (where the time went).
    phases: dict = field(default_factory=dict)

    def mark(self, phase: str, started: float) -> None:
        self.phases[phase] = time.perf_counter() - started


class Checkpointer:
    """Save and resume a model + optimizer + trainer state. Usable from any training loop::

        ckpt = Checkpointer("s3://bucket/run", rank=dist.get_rank(), world_size=dist.get_world_size())
        state = ckpt.resume(model, optimizer)          # None on a fresh start
        ...
        ckpt.save(step, model, optimizer, {"step": step}, blocking=False)
        ...
        ckpt.close()

    An async save copies the state to memory in the background while the loop runs its next forward and backward
    (which do not change parameters or optimizer state); the optimizer's next `step()` waits for that copy to end
    (a pre-step hook this class registers). Code that changes parameters by other means between a save and the
    next optimizer step calls `wait_for_staging()` first.
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
        io_threads: Optional[int] = None,
    ):
        self.store = CheckpointStore(uri, endpoint_url)
        # Files each rank writes (and reads) in parallel: serialising, hashing and copying are CPU work, so use the
        # cores this rank has to itself (a GPU node has ~12 per rank; a 2-core box running 2 ranks, one).
        self.io_threads = io_threads or default_io_threads()
        self.rank = rank
        self.world_size = world_size
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.commit_timeout_s = commit_timeout_s
        self.warn = warn
        self.on_commit = on_commit
        # Async saves run collectives from a background thread: give them a group of their own (gloo, CPU) so they
        # never interleave with the training loop's, with a timeout so a rank that died cannot hold the others.
        self.group = (dist.new_group(backend="gloo", timeout=timedelta(seconds=commit_timeout_s))
                      if dist.is_initialized() else None)
        # The write-and-commit of an async save runs on a daemon thread: if this process dies mid-save, its exit is
        # never held up by a commit that can no longer happen (and no COMMIT is written — as it must be).
        self._pending: Optional[threading.Thread] = None
        self._staging: Optional[Future] = None  # the in-flight staging copy of an async save
        self._step_hooks: dict[int, object] = {}  # id(optimizer) -> handle of its wait-for-staging pre-step hook
        self.last_step: Optional[int] = None  # newest step handed to save()
        self._writer = None
        self._stager_instance = None
        self._agreed_layout: Optional[str] = None  # None: not settled; "": ranks differ; else the agreed layout
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
        """Checkpoint `step`. With blocking=False, returns once the copy to memory has started; the copy, write and
        commit go on in the background, and `optimizer.step()` waits for the copy (see the class docstring)."""
        self.wait()
        directory = step_dir(step)
        started = time.perf_counter()
        # Captured now (they change every step), written with their fsyncs by the background thread.
        small_files = {rng_file(self.rank): rng_bytes()}
        if self.rank == 0:
            state = {**trainer_state, "world_size": self.world_size, "saved_at": time.time()}
            small_files[TRAINER_STATE] = json.dumps(state, indent=2).encode("utf-8")
        app_state, layout = self._state_to_write(model_and_optimizer_state(model, optimizer))
        stats = SaveStats(step=step, blocking_s=0.0)
        self.history.append(stats)
        self.last_step = step
        if blocking:
            self._prepare_directory(directory)
            self._check_layout(layout)
            writing_small = self._write_small_files(directory, small_files)
            self._write_state(app_state, directory)
            stats.blocking_s = time.perf_counter() - started
            self._finish(directory, writing_small, stats, started)
            return stats  # a failed blocking save raises (CheckpointException): the caller asked to wait for it
        # Buffers (e.g. BatchNorm statistics) may change in the next forward: copy them now (they are small).
        # Parameters and optimizer state change only in optimizer.step(), which waits for the staging copy.
        snapshot_buffers(app_state, model)
        self._guard(optimizer)
        staged = self._stager().stage(app_state)
        self._staging = staged
        stats.blocking_s = time.perf_counter() - started
        self._pending = threading.Thread(target=self._write_and_finish,
                                         args=(staged, layout, directory, small_files, stats, started),
                                         name=f"ddlc-checkpoint-{step}", daemon=True)
        self._pending.start()
        return stats

    def wait_for_staging(self) -> float:
        """Block until the in-flight async save has copied the state (seconds waited). Called before each
        optimizer step by the hook `save()` registers; call it before changing parameters any other way."""
        staged, self._staging = self._staging, None
        if staged is None or staged.done():
            return 0.0
        started = time.perf_counter()
        try:
            staged.result()
        except Exception:  # reported by the save's own thread, which sees the same exception
            pass
        waited = time.perf_counter() - started
        if self.history:
            self.history[-1].blocking_s += waited
        return waited

    def _guard(self, optimizer: torch.optim.Optimizer) -> None:
        if id(optimizer) not in self._step_hooks:
            self._step_hooks[id(optimizer)] = optimizer.register_step_pre_hook(self._before_optimizer_step)

    def _before_optimizer_step(self, _optimizer, _args, _kwargs) -> None:
        self.wait_for_staging()

    def _stager(self):
        # One stager for the whole run: it keeps its CPU copies (pinned on GPU hosts) keyed by the source storage,
        # so every save after the first copies into buffers that already exist instead of allocating. Staging runs
        # on its own thread and CUDA stream, after the device work queued so far (see `make_stager`).
        if self._stager_instance is None:
            from ddlc.checkpoint.state import make_stager

            self._stager_instance = make_stager()
        return self._stager_instance

    def _state_to_write(self, state: dict) -> tuple[dict, Optional[str]]:
        """(what this rank writes, the layout to confirm before writing it: None when nothing needs confirming).

        Under DDP every rank holds the same replicated tensors and writes only its share of them (see
        `assign_replicated_share`). Whether the ranks' layouts agree is settled with a collective on the first save;
        later saves assume it still holds and confirm it in the background, before anything is written. Every rank
        takes the same branch: `_agreed_layout` changes only on collective results, which all ranks share.
        """
        if self.group is None or self.world_size <= 1:
            return state, None
        layout = replicated_layout(state)
        if self._agreed_layout is None:
            self._agreed_layout = layout if layouts_agree(layout, self.world_size, self.group) else ""
            if self._agreed_layout:
                return assign_replicated_share(state, self.rank, self.world_size), None
        if not self._agreed_layout:  # the ranks hold different tensors (not DDP): each writes all it has
            return state, None
        return assign_replicated_share(state, self.rank, self.world_size), layout

    def _check_layout(self, layout: Optional[str]) -> None:
        """Confirm that every rank still holds the layout its share was computed from; if not, fail this save (no
        rank writes anything) and settle the question again in the foreground next time."""
        if layout is None:
            return
        if not layouts_agree(layout, self.world_size, self.group):
            self._agreed_layout = None
            raise RuntimeError("ranks hold different tensors than at the previous checkpoint; this save is skipped "
                               "and the next one re-plans who writes what")
        self._agreed_layout = layout

    def _prepare_directory(self, directory: str) -> None:
        if self.rank == 0 and self.store.exists(directory):
            # An older commit of this very step (e.g. a rerun), or debris of a save that died part-way: replace it.
            self.store.remove_tree(directory)
        self._barrier()
        self.store.makedirs(directory)

    def _write_state(self, app_state: dict, directory: str) -> None:
        if self._writer is None:
            self._writer = self.store.dcp_writer(directory, io_threads=self.io_threads)
        take_write_digests(self._writer, self.store.path(directory))  # drop any left by an earlier failed save here
        dcp.save(app_state, checkpoint_id=self.store.url(directory), storage_writer=self._writer,
                 process_group=self.group)

    def _write_and_finish(self, staged: Future, layout: Optional[str], directory: str, small_files: dict[str, bytes],
                          stats: SaveStats, started: float) -> None:
        try:
            self._prepare_directory(directory)
            self._check_layout(layout)
            writing_small = self._write_small_files(directory, small_files)
            stats.mark("directory", started)
            state = staged.result()
            stats.mark("staged", started)
            self._write_state(state, directory)
            stats.mark("dcp_written", started)
        except (Exception, CheckpointException) as exc:  # a failed save must not kill training; the previous commit still stands
            self._failed(directory, stats, exc, started)
            return
        self._finish(directory, writing_small, stats, started)

    def _failed(self, directory: str, stats: SaveStats, exc: Exception, started: float) -> None:
        stats.error = f"{type(exc).__name__}: {exc}"
        stats.total_s = time.perf_counter() - started
        self.warn(f"checkpoint {self.store.display(directory)} failed and was not committed: {stats.error}")

    def _write_small_files(self, directory: str, small_files: dict[str, bytes]) -> Future:
        """Write (and fsync) the RNG / trainer-state files on a thread of their own, while DCP writes the shards."""
        done: Future = Future()

        def write() -> None:
            try:
                for name, data in small_files.items():
                    self.store.write_bytes_atomic(f"{directory}/{name}", data)
                done.set_result(None)
            except BaseException as exc:  # noqa: BLE001 (handed to the save's thread, which reports it)
                done.set_exception(exc)

        threading.Thread(target=write, name="ddlc-checkpoint-small-files", daemon=True).start()
        return done

    def _finish(self, directory: str, writing_small: Future, stats: SaveStats, started: float) -> None:
        """After DCP wrote every rank's shards (its save ends with a collective): small files, manifests, commit."""
        try:
            writing_small.result()
            stats.mark("small_files", started)
            own = self._own_file_digests(directory)
            stats.mark("digests", started)
            manifests = self._gather_to_rank0(own)
            stats.mark("gathered", started)
            if self.rank == 0:
                self._commit(directory, manifests, stats)
                stats.mark("committed", started)
            stats.total_s = time.perf_counter() - started
            if self.rank == 0 and self.on_commit is not None:
                self.on_commit(stats)
        except Exception as exc:  # a failed save must not kill training; the previous commit still stands
            self._failed(directory, stats, exc, started)
            return
        if self.rank == 0:  # housekeeping after the commit, off the commit's critical path
            cleaned = time.perf_counter()
            try:
                self.apply_retention()
            except Exception as exc:
                self.warn(f"checkpoint retention failed (nothing newer than the last commit was touched): {exc}")
            stats.retention_s = time.perf_counter() - cleaned

    def _own_files(self, directory: str) -> dict[str, int]:
        mine = {}
        for info in self.store.list_files(directory):
            name = info.name
            if name.startswith(f"__{self.rank}_") or name == rng_file(self.rank):
                mine[name] = info.size
            elif self.rank == 0 and name in (".metadata", TRAINER_STATE):
                mine[name] = info.size
        return mine

    def _own_file_digests(self, directory: str) -> dict[str, dict]:
        """{name: {size, sha256}} for the files this rank wrote. Shards digested while DCP wrote them count when the
        file on disk still has the size that was digested; everything else is hashed by reading it back."""
        own = self._own_files(directory)
        written = take_write_digests(self._writer, self.store.path(directory))
        files = {name: digest for name, digest in written.items() if own.get(name) == digest["size"]}
        files.update(hash_files(self.store, directory, sorted(name for name in own if name not in files)))
        return files

    def _gather_to_rank0(self, own: dict[str, dict]) -> list[dict[str, dict]]:
        """Every rank's file digests, on rank 0 (one small collective on the checkpoint group)."""
        if self.group is None or self.world_size == 1:
            return [own]
        gathered: list = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(own, gathered, dst=0, group=self.group)
        return gathered if self.rank == 0 else []

    def _commit(self, directory: str, manifests: list[dict[str, dict]], stats: SaveStats) -> None:
        files: dict[str, dict] = {}
        for rank_files in manifests:
            files.update(rank_files)
        present = {f.name for f in self.store.list_files(directory)}
        unlisted = sorted(n for n in present if n not in files and n != COMMIT)
        files.update(hash_files(self.store, directory, unlisted))
        missing = sorted(n for n in files if n not in present)
        if missing:
            raise FileNotFoundError(f"files recorded by a rank are gone from {self.store.display(directory)}: {missing}")
        trainer_state = json.loads(self.store.read_text(f"{directory}/{TRAINER_STATE}"))
        manifest = Manifest(step=stats.step, files=files, world_size=self.world_size,
                            extra={"trainer_state": trainer_state})
        self.store.write_text_atomic(f"{directory}/{COMMIT}", manifest.to_json())
        self.store.write_text_atomic(LATEST, directory + "\n")
        stats.committed = True

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
        self.wait_for_staging()
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

        Rank 0 picks the newest committed checkpoint whose files have their recorded sizes. Every rank SHA-256-checks
        its share of the files during the load: on local storage from the very bytes DCP decodes (the reader digests
        them as it reads), elsewhere by reading them in a thread alongside. If any file is corrupt, the loaded values
        are discarded — the next older checkpoint is loaded over every tensor — so a corrupt checkpoint never reaches
        the model.
        """
        rejected: set[str] = set()
        while True:
            chosen = [self.latest_valid(check_hashes=False, skip=frozenset(rejected)) if self.rank == 0 else None]
            if self.group is not None and self.world_size > 1:
                dist.broadcast_object_list(chosen, src=0, group=self.group)
            directory = chosen[0]
            if directory is None:
                return None
            app_state = model_and_optimizer_state(model, optimizer)
            problems = self._load_verified(directory, app_state, check_hashes)
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

    def _load_verified(self, directory: str, app_state: dict, check_hashes: bool) -> list[str]:
        """DCP-load `directory` into `app_state` while checking this rank's share of its files; the problems found."""
        manifest = read_manifest(self.store, directory)
        if manifest is None:
            return ["not committed (no valid COMMIT marker)"]
        share = self._verification_share(manifest) if check_hashes else []
        problems: list[str] = []
        reader = self.store.dcp_reader(directory, digest_names=frozenset(share), io_threads=self.io_threads)
        reader_digests: Optional[dict] = getattr(reader, "digests", None)
        checker = None
        if share and reader_digests is None:  # this reader cannot digest what it reads: hash alongside instead
            checker = threading.Thread(target=lambda: problems.extend(self._compare(directory, manifest, share)),
                                       daemon=True)
            checker.start()
        try:
            dcp.load(app_state, checkpoint_id=self.store.url(directory), storage_reader=reader,
                     process_group=self.group)
        except (Exception, CheckpointException) as exc:  # DCP gathers read errors: every rank lands here together
            problems.append(f"unreadable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        if checker is not None:
            checker.join()
        elif share:
            read = {name: {"sha256": sha} for name, sha in reader_digests.items()}
            problems += self._compare(directory, manifest, [n for n in share if n not in read], already=read)
        return problems

    def _verification_share(self, manifest: Manifest) -> list[str]:
        """This rank's files to SHA-256-check: largest first onto the least-loaded rank, the same on every rank."""
        owners = balance_by_size([(name, entry["size"]) for name, entry in sorted(manifest.files.items())],
                                 self.world_size)
        return [name for name, owner in owners.items() if owner == self.rank]

    def _compare(self, directory: str, manifest: Manifest, names: list[str], already: Optional[dict] = None) -> list[str]:
        hashed = dict(already or {})
        hashed.update(hash_files(self.store, directory, names))
        return [f"{name}: sha256 mismatch (corrupted)" for name in sorted(hashed)
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
            for handle in self._step_hooks.values():
                handle.remove()
            self._step_hooks.clear()
            if self._stager_instance is not None:
                self._stager_instance.close()
            self._stager_instance = None
            self._writer = None
