"""Sharded, async, atomic, verified checkpoints on top of torch.distributed.checkpoint (DCP): staging and saving.

Save of step N (directory `step-0000000N/` under the checkpoint URI); each phase's outcome is agreed by every rank
through the job's key-value store with a timeout of its own (agreement.py), so a storage failure on one rank is a
failed save on all ranks, within seconds, and training goes on:

    save() [training thread]: RNG (rank 0: trainer state) captured; model/optimizer views; under DDP each rank
        keeps its share of the replicated tensors; buffers copied; staging copy to CPU starts (the optimizer's next
        step() waits for it: a pre-step hook)
    background thread (blocking saves: the same, in the caller's thread):
        "prepared"  rank 0 removes an old directory of this step        (short timeout: agree_timeout_s)
        "ready"     small files written, staging done, layouts equal    (commit_timeout_s)
        DCP save    shards written (SHA-256 digested as written) on the checkpoint group
        "written"   every rank's file digests --> rank 0                (commit_timeout_s)
        commit.py   rank 0: COMMIT last, `latest`, decision "committed" --> every rank; then retention
    any failure: a warning (the previous commit stands; rank 0 removes the failed directory), or, for a blocking
    save, CheckpointSaveError on every rank.

Resume (loading.py): the newest committed checkpoint by commit order whose files verify, loaded on every rank; only
corruption falls back to an older one; a run whose every checkpoint is broken refuses to start over (exit 2).
Lineages (lineage.py): a fresh start never writes next to another run's checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from ddlc.checkpoint import catalog, retention
from ddlc.checkpoint.agreement import Agreement, default_store
from ddlc.checkpoint.commit import build_manifest, highest_seq, own_file_digests, rng_file, write_commit
from ddlc.checkpoint.errors import CheckpointLoadError, CheckpointSaveError
from ddlc.checkpoint.lineage import new_lineage, prepare_fresh_start
from ddlc.checkpoint.loading import Choice, VerifiedLoad, choose
from ddlc.checkpoint.manifest import TRAINER_STATE, Manifest, step_dir
from ddlc.checkpoint.state import (
    assign_replicated_share,
    layouts_agree,
    load_model_and_optimizer_state,
    load_rng_bytes,
    model_and_optimizer_state,
    replicated_layout,
    rng_bytes,
    set_rng_state,
    snapshot_buffers,
)
from ddlc.checkpoint.save_phases import SaveJob, describe
from ddlc.checkpoint.storage import CheckpointStore
from ddlc.checkpoint.write_digests import guard_write_errors, take_write_digests, take_write_errors
from ddlc.errors import UserError

log = logging.getLogger("ddlc.checkpoint")

__all__ = ["Checkpointer", "SaveStats", "default_io_threads", "rng_file"]


def default_io_threads(limit: int = 4) -> int:
    """CPU cores per local rank (LOCAL_WORLD_SIZE from the launcher), between 1 and `limit`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(limit, cores // max(1, local_ranks)))


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
        state = ckpt.resume(model, optimizer)          # None on a fresh start (or ckpt.start_fresh())
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
        agree_timeout_s: float = 60.0,
        load_timeout_s: Optional[float] = None,
        private_store: bool = False,
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
        self.agree_timeout_s = min(agree_timeout_s, commit_timeout_s)
        self.load_timeout_s = load_timeout_s or max(3600.0, 4 * commit_timeout_s)
        self.warn = warn
        self.on_commit = on_commit
        distributed = dist.is_initialized() and world_size > 1
        # Async saves run collectives from a background thread: give them a group of their own (gloo, CPU) so they
        # never interleave with the training loop's. Loads get another, with a longer timeout: a slow load is not
        # a corrupt one. Outcomes of each save phase are agreed through the job's store (agreement.py).
        self.group = (dist.new_group(backend="gloo", timeout=timedelta(seconds=commit_timeout_s))
                      if dist.is_initialized() else None)
        self.load_group = (dist.new_group(backend="gloo", timeout=timedelta(seconds=self.load_timeout_s))
                           if dist.is_initialized() else None)
        self._kv = default_store() if distributed else None
        if private_store and self._kv is not None:
            # A second checkpointer in the same job (the memory tier): a store client of its own, since a client
            # serves one blocking wait at a time and each checkpointer's save thread waits on it for long.
            self._kv = self._kv.clone()
        self._save_prefix = self._shared_token() if distributed else ""
        # The write-and-commit of an async save runs on a daemon thread: if this process dies mid-save, its exit is
        # never held up by a commit that can no longer happen (and no COMMIT is written — as it must be).
        self._pending: Optional[threading.Thread] = None
        self._staging: Optional[Future] = None  # the in-flight staging copy of an async save
        self._step_hooks: dict[int, object] = {}  # id(optimizer) -> handle of its wait-for-staging pre-step hook
        self.last_step: Optional[int] = None  # newest step handed to save()
        self._writer = None
        self._stager_instance = None
        self._agreed_layout: Optional[str] = None  # None: not settled; "": ranks differ; else the agreed layout
        self._saves = 0  # saves started: the same count on every rank, names each save's agreement keys
        self.history: list[SaveStats] = []
        # Lineage and commit order (rank 0 commits): set by resume()/start_fresh(), else at the first commit.
        self.lineage: Optional[str] = None
        self._last_seq: Optional[int] = None
        self.resumed_from: Optional[str] = None  # directory name
        self._known_corrupt: dict[str, str] = {}  # found corrupt at resume: retention need not read them again
        self._proven: dict[str, tuple] = {}  # name -> commit order, SHA-256 checked (see catalog.plan_on_proof)
        # The memory tier of a multi-node job: each node's directory holds its own ranks' files only, so rank 0
        # commits what the ranks reported and leaves retention to the tier (memory_tier.py), which sees every node.
        self.node_local = False

    def _shared_token(self) -> str:
        token = [uuid.uuid4().hex[:12] if self.rank == 0 else None]
        dist.broadcast_object_list(token, src=0, group=self.group)
        return f"ddlc-ckpt/{token[0]}"

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
        commit go on in the background, and `optimizer.step()` waits for the copy (see the class docstring). A
        failed async save is a warning; a failed blocking save raises CheckpointSaveError on every rank."""
        self.wait()
        directory = step_dir(step)
        started = time.perf_counter()
        self._saves += 1
        # Captured now (they change every step), written with their fsyncs by the background thread.
        small_files = {rng_file(self.rank): rng_bytes()}
        if self.rank == 0:
            state = {**trainer_state, "world_size": self.world_size, "saved_at": time.time()}
            small_files[TRAINER_STATE] = json.dumps(state, indent=2).encode("utf-8")
        app_state, layout = self._state_to_write(model_and_optimizer_state(model, optimizer))
        stats = SaveStats(step=step, blocking_s=0.0)
        self.history.append(stats)
        self.last_step = step
        job = SaveJob(directory, layout, small_files, stats, started, self._agreement())
        if blocking:
            staged: Future = Future()
            staged.set_result(app_state)
            self._run_save(job, staged, warn=False)
            stats.blocking_s = time.perf_counter() - started
            if not stats.committed:
                previous = next((s.step for s in reversed(self.history) if s.committed), None)
                standing = (f"; the newest checkpoint committed by this run, {self.store.display(step_dir(previous))}, "
                            "still stands") if previous is not None else ""
                raise CheckpointSaveError(f"checkpoint {self.store.display(directory)} could not be saved: "
                                          f"{stats.error}{standing}")
            return stats
        # Buffers (e.g. BatchNorm statistics) may change in the next forward: copy them now (they are small).
        # Parameters and optimizer state change only in optimizer.step(), which waits for the staging copy.
        snapshot_buffers(app_state, model)
        self._guard(optimizer)
        staged = self._stager().stage(app_state)
        self._staging = staged
        stats.blocking_s = time.perf_counter() - started
        self._pending = threading.Thread(target=self._run_save, args=(job, staged), name=f"ddlc-checkpoint-{step}",
                                         daemon=True)
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
        later saves assume it still holds and confirm it in the "ready" agreement, before anything is written. Every
        rank takes the same branch: `_agreed_layout` changes only on collective results, which all ranks share.
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

    PHASES = ["0-prepared", "1-ready", "2-written"]

    def _agreement(self) -> Optional[Agreement]:
        if self._kv is None:
            return None
        if self._saves > 2:  # every rank is past the save before last: free this rank's keys of it
            Agreement(self._kv, self.rank, self.world_size, f"{self._save_prefix}/{self._saves - 2}").forget(self.PHASES)
        return Agreement(self._kv, self.rank, self.world_size, f"{self._save_prefix}/{self._saves}")

    def _run_save(self, job: SaveJob, staged: Future, warn: bool = True) -> None:
        """Every phase of one save (see the module docstring); records the outcome in job.stats, never raises."""
        try:
            self._write_phases(job, staged)
        except (Exception, CheckpointException) as exc:  # the previous commit still stands
            self._failed(job, exc, warn)
            return
        if self.rank == 0 and not self.node_local:  # housekeeping after the commit, off the critical path
            cleaned = time.perf_counter()
            try:
                self.apply_retention(just_committed=job.directory)
            except Exception as exc:  # noqa: BLE001
                self.warn(f"checkpoint retention failed (nothing newer than the last commit was touched): {exc}")
            job.stats.retention_s = time.perf_counter() - cleaned

    def _write_phases(self, job: SaveJob, staged: Future) -> None:
        stats, directory, started = job.stats, job.directory, job.started
        job.phase(0, "prepared", lambda: self._prepare(directory), self.agree_timeout_s)
        stats.mark("directory", started)
        writing_small = self._write_small_files(directory, job.small_files)
        state = {}

        def ready():
            state["app"] = staged.result()
            self.store.makedirs(directory)
            return job.layout

        layouts = job.phase(1, "ready", ready, self.commit_timeout_s)
        if job.layout is not None and len(set(layouts)) > 1:
            self._agreed_layout = None
            raise RuntimeError("ranks hold different tensors than at the previous checkpoint; this save is skipped "
                               "and the next one re-plans who writes what")
        stats.mark("staged", started)
        job.attempted_write = True
        self._write_state(state.pop("app"), directory)  # DCP: collectives on the checkpoint group
        stats.mark("dcp_written", started)

        def written():
            errors = take_write_errors(self._writer)
            if errors:
                raise errors[0]
            writing_small.result()
            return own_file_digests(self.store, self._writer, directory, self.rank)

        reported = job.phase(2, "written", written, self.commit_timeout_s, want_values=self.rank == 0)
        stats.mark("digests", started)
        if self.rank == 0:
            job.commit("3-committed", lambda: self._manifest(directory, reported, stats), self._write_commit)
            stats.mark("committed", started)
        else:
            job.await_commit("3-committed", self.commit_timeout_s)
        stats.total_s = time.perf_counter() - started
        stats.committed = True
        if self.rank == 0 and self.on_commit is not None:
            self.on_commit(stats)

    def _prepare(self, directory: str) -> None:
        if self.rank == 0 and self.store.exists(directory):
            # An older commit of this very step (e.g. a rerun), or debris of a save that died part-way: replace it.
            self.store.remove_tree(directory)

    def _write_state(self, app_state: dict, directory: str) -> None:
        """DCP save: every rank enters it (the "ready" agreement saw to that), so its collectives pair up; errors
        inside file streams are collected (write_digests.guard_write_errors) and reported in "written"."""
        if self._writer is None:
            self._writer = self.store.dcp_writer(directory, io_threads=self.io_threads)
            guard_write_errors(self._writer)
        take_write_digests(self._writer, self.store.path(directory))  # drop any left by an earlier failed save here
        take_write_errors(self._writer)
        dcp.save(app_state, checkpoint_id=self.store.url(directory), storage_writer=self._writer,
                 process_group=self.group)

    def _write_small_files(self, directory: str, small_files: dict[str, bytes]) -> Future:
        """Write (and fsync) the RNG / trainer-state files on a thread of their own, while DCP writes the shards."""
        done: Future = Future()

        def write() -> None:
            try:
                self.store.makedirs(directory)
                for name, data in small_files.items():
                    self.store.write_bytes_atomic(f"{directory}/{name}", data)
                done.set_result(None)
            except BaseException as exc:  # noqa: BLE001 (handed to the save's thread, which reports it)
                done.set_exception(exc)

        threading.Thread(target=write, name="ddlc-checkpoint-small-files", daemon=True).start()
        return done

    def _manifest(self, directory: str, reported: list, stats: SaveStats) -> tuple[str, Manifest]:
        if self._last_seq is None:
            self._last_seq = highest_seq(self.store)
        if self.lineage is None:
            self.lineage = new_lineage()
        return directory, build_manifest(self.store, directory, stats.step, reported, self.world_size,
                                         self.lineage, self._last_seq + 1, node_local=self.node_local)

    def _write_commit(self, prepared: tuple[str, Manifest]) -> None:
        directory, manifest = prepared
        write_commit(self.store, directory, manifest)
        self._last_seq = manifest.seq

    def _failed(self, job: SaveJob, exc: BaseException, warn: bool) -> None:
        stats = job.stats
        stats.error = describe(exc)
        stats.total_s = time.perf_counter() - job.started
        if warn and self.rank == 0:  # every rank has the same outcome: say it once
            self.warn(f"checkpoint {self.store.display(job.directory)} failed and was not committed: {stats.error}")
        if self.rank == 0 and self.on_commit is not None:  # counted once, as a failure (ddlc_checkpoints_total)
            try:
                self.on_commit(stats)
            except Exception as callback_error:  # noqa: BLE001 (metrics must not turn a failed save into a crash)
                log.warning("on_commit callback failed: %s", callback_error)
        if self.rank == 0 and job.attempted_write:
            try:  # debris of this save: its space is needed more than its bytes
                self.store.remove_tree(job.directory)
            except Exception:  # noqa: BLE001 (storage down: retention removes it after the next commit)
                pass

    def apply_retention(self, just_committed: Optional[str] = None) -> list[str]:
        """Delete what the retention rules allow (retention.py) among this run's checkpoints; `latest` is moved
        first if it named one of them. Returns the deleted directory names."""
        if just_committed:  # a new checkpoint under the name of one found corrupt at resume (a rerun step)
            self._known_corrupt.pop(just_committed, None)
        entries = catalog.scan(self.store, known=self._known_corrupt,
                               known_good=[just_committed] if just_committed else [])
        if just_committed:  # its hashes were computed from the bytes this job wrote
            self._proven.update({e.name: e.order for e in entries if e.name == just_committed})
        protect = [self.resumed_from] if self.resumed_from else []
        entries, decisions = catalog.plan_on_proof(self.store, entries, self.keep_last, self.keep_every,
                                                   protect=protect, own_lineages={None, self.lineage},
                                                   proven=self._proven)
        return catalog.apply(self.store, entries, decisions)

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

    # -- start: resume or fresh ------------------------------------------------------------------------------
    def _broadcast(self, value):
        box = [value]
        if self.load_group is not None and self.world_size > 1:
            dist.broadcast_object_list(box, src=0, group=self.load_group)
        return box[0]

    def start_fresh(self, on_existing: str = "refuse") -> None:
        """Begin a new lineage here (checkpoint.resume=false): refuse, or move another run's checkpoints aside
        first (lineage.py). Raises UserError on every rank when refusing."""
        outcome = {"error": None, "note": ""}
        if self.rank == 0:
            try:
                outcome["note"] = prepare_fresh_start(self.store, on_existing)
            except UserError as error:
                outcome["error"] = str(error)
        outcome = self._broadcast(outcome)
        if outcome["error"]:
            raise UserError(outcome["error"])
        if outcome["note"] and self.rank == 0:
            self.warn(outcome["note"])
        self.lineage, self._last_seq = new_lineage(), highest_seq(self.store) if self.rank == 0 else 0

    def latest_valid(self, check_hashes: bool = True, skip: frozenset = frozenset()) -> Optional[str]:
        """Newest committed checkpoint (commit order) that verifies; warns about each newer one it skips."""
        choice = choose(self.store, {name: "skipped" for name in skip}, self.warn)
        if choice.directory is not None and check_hashes:
            result = catalog.verify(self.store, choice.directory)
            if not result.ok:
                self.warn(f"skipping checkpoint {self.store.display(choice.directory)}: {result.summary()}")
                return self.latest_valid(check_hashes, frozenset({*skip, choice.directory}))
        return choice.directory

    def peek(self) -> Choice:
        """Rank 0: what resume() would pick first (sizes checked, no hashes, no warnings); loads nothing."""
        return choose(self.store, {}, lambda _message: None)

    def _choose(self, rejected: dict[str, str], after_step: Optional[int] = None) -> Choice:
        try:
            return choose(self.store, rejected, self.warn, after_step)
        except Exception as exc:  # noqa: BLE001 (storage down: every rank stops, none waits for rank 0)
            return Choice(error=f"cannot read the checkpoints under {self.store.display()} to resume: "
                                f"{describe(exc)}")

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, check_hashes: bool = True,
               after_step: Optional[int] = None) -> Optional[dict]:
        """Load the newest valid checkpoint into model and optimizer; return its trainer state (None: fresh).

        Rank 0 picks the newest committed checkpoint (commit order) whose files have their recorded sizes. Every
        rank SHA-256-checks its share of the files during the load: on local storage from the very bytes DCP
        decodes, elsewhere by reading them in a thread alongside. If any file is corrupt, the loaded values are
        discarded — the next older checkpoint is loaded over every tensor — so a corrupt checkpoint never reaches
        the model. If every committed checkpoint is broken, raises UserError (exit 2) rather than start over.
        `after_step` (rank 0's value counts): consider only later steps, and return None when none verifies.
        """
        loader = VerifiedLoad(self.store, self.rank, self.world_size, self.load_group, self.io_threads,
                              self.load_timeout_s)
        rejected: dict[str, str] = {}
        while True:
            choice: Choice = self._broadcast(self._choose(rejected, after_step) if self.rank == 0 else None)
            if choice.error:
                raise CheckpointLoadError(choice.error)
            directory = choice.directory
            if directory is None:
                if choice.refusal:
                    raise UserError(choice.refusal)
                self.lineage, self._last_seq = new_lineage(), choice.highest_seq
                self._known_corrupt = dict(rejected)
                return None
            app_state = model_and_optimizer_state(model, optimizer)
            everyone = loader.gather(loader.load(directory, app_state, check_hashes))
            if not everyone:
                break
            if self.rank == 0:
                self.warn(f"skipping checkpoint {self.store.display(directory)}: {'; '.join(everyone)}")
            rejected[directory] = "; ".join(everyone)
        load_model_and_optimizer_state(model, optimizer, app_state)
        # The continuation keeps the lineage of what it loaded (unstamped checkpoints: a new one; see lineage.py).
        self.lineage = choice.lineage or new_lineage()
        self._last_seq = choice.highest_seq
        self.resumed_from = directory
        self._known_corrupt = dict(rejected)
        trainer_state = json.loads(self.store.read_text(f"{directory}/{TRAINER_STATE}"))
        trainer_state["checkpoint"] = self.store.display(directory)
        if trainer_state.get("world_size") == self.world_size:
            set_rng_state(load_rng_bytes(self.store.open(f"{directory}/{rng_file(self.rank)}").read()))
        else:
            trainer_state["rng_restored"] = False  # different world size: per-rank streams do not map over
        return trainer_state

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
