"""The host-memory checkpoint tier: frequent snapshots in host shared memory, for a restart in seconds.

    every checkpoint.memory_interval_steps steps (not a storage-checkpoint step):
        a second Checkpointer, rooted at <memory_dir>/<run name>/ (default /dev/shm/ddlc/...), saves the same state
        a storage checkpoint holds, the same way: async staging copy, DCP shards digested as written, manifest +
        COMMIT by rank 0, keep_last=2. A torn or corrupt snapshot is never loaded (same verification as storage).
    resume (Trainer.resume):
        rank 0 peeks storage's newest committed step S; the memory tier loads its newest snapshot of a step > S that
        verifies (a corrupt one: the next older one); none --> storage resume as before, and stale snapshots go.
    bounds: at start, every node's leader checks its own memory_dir: 3 x the state's bytes (two kept + one being
        written; multi-node: peer_ring.node_need) must fit in its free space, else every rank of every node exits 2
        with that node's numbers; a snapshot or peer copy that runs out of space at run time turns the tier off on
        every node (one warning) and training goes on with storage checkpoints.

Survives: a worker or whole-job restart on the same node (torchrun --max-restarts, a crash, a kill -9).

Multi-node jobs (checkpoint.memory_peer_replica, on by default), the peer replica:
    each node's directory holds its own ranks' files of a snapshot (rank 0's node also .metadata, trainer state and
    COMMIT; rank 0 commits what the ranks reported). After a snapshot commits, each node's first rank (its leader)
    sends the node's files of that step to the next node's leader (ring: node i -> node (i+1) % N) over a gloo
    group of the leaders, from a background thread; the receiver writes them to <memory_dir>/<run>.peers/
    of-node-<i>/step-N.tmp and renames it into place (newest two kept; a node keeps its own files of the newest
    two snapshots and of the two newest it replicated, see peer_ring.prune_own). A replication still in flight on
    any node when the next snapshot starts makes every node skip replicating that snapshot (agreed in the
    all-reduce each snapshot already does), so it never holds training up.
    resume: every leader lists the steps it holds (own and peer copies) with their file sizes and COMMIT; rank 0
    picks the newest step newer than storage's whose COMMIT-listed files are all held somewhere with their
    recorded sizes; the files each node lacks are broadcast among the leaders into its own directory, newer
    steps are removed, and the usual verified load (SHA-256 against COMMIT) takes that step on every rank (DCP
    reshards when the number of ranks changed: a surviving node restarted alone loads its own files plus its copy
    of its peer's). No such step (two adjacent nodes lost): storage.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ddlc.checkpoint import peer_ring
from ddlc.checkpoint.checkpointer import Checkpointer, SaveStats
from ddlc.checkpoint.manifest import COMMIT, parse_step, step_dir
from ddlc.checkpoint.peer_ring import SNAPSHOTS_AT_PEAK  # noqa: F401 (re-exported: benchmarks, docs)
from ddlc.errors import UserError

HEADROOM = 0.9  # at most this share of the free space


class MemoryRoomError(UserError):
    """The tier cannot fit in some node's memory_dir: every node's log says so (not only rank 0's), with the
    numbers of the node that lacks the room."""

    every_node = True


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
                 warn: Callable[[str], None], commit_timeout_s: float, load_timeout_s: Optional[float] = None,
                 local_world_size: Optional[int] = None,
                 on_commit: Optional[Callable[..., None]] = None):
        """on_commit(stats, tier): a snapshot's outcome on rank 0 (tier "memory"), a peer copy's on each node's
        leader (tier "peer"); for the ddlc_checkpoint_* metrics."""
        self.root = Path(memory_dir).expanduser().absolute()
        self.path = self.root / run_name
        self.peers_path = self.root / f"{run_name}.peers"  # copies of other nodes' snapshots (multi-node)
        self.local_world_size = local_world_size or world_size
        self.num_nodes = max(world_size // self.local_world_size, 1)
        self.node = rank // self.local_world_size
        self.leader = rank % self.local_world_size == 0  # one per node: replicates and tidies the node's files
        self.replicated = self.num_nodes > 1
        self.replications = 0  # replications this node's leader completed
        self._skips = 0  # snapshots not replicated because the previous replication was still in flight
        self.replicated_steps: list[int] = []  # their steps, oldest first (own files of the newest two are kept)
        self._replica_thread: Optional[threading.Thread] = None
        self._replica_error: Optional[str] = None
        self.interval_steps = interval_steps
        self.rank = rank
        self.world_size = world_size
        self._warn = warn
        self.enabled = True
        self.saves = 0
        # Reported by check_fits, after every rank took part in the collectives below (raising here would leave the
        # other nodes waiting in them for the timeout).
        self._setup_problem: Optional[str] = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            where = f" on node {self.node}" if self.num_nodes > 1 else ""
            self._setup_problem = (f"checkpoint.memory_dir {self.root}: cannot create {self.path}{where}: "
                                   f"{error.strerror or error}")

        def quiet_warn(message: str) -> None:
            if not _out_of_space(message):  # reported once, in its own words, by _check_space
                warn(f"memory tier: {message}")

        self.checkpointer = Checkpointer(str(self.path), rank=rank, world_size=world_size, keep_last=2,
                                         commit_timeout_s=commit_timeout_s, load_timeout_s=load_timeout_s,
                                         warn=quiet_warn, private_store=True,
                                         on_commit=(lambda stats: on_commit(stats, "memory")) if on_commit else None)
        self._on_commit = on_commit
        self.leaders_group = None
        if self.replicated:
            self.checkpointer.node_local = True
            leaders = peer_ring.leaders(self.num_nodes, self.local_world_size)
            # Every rank creates the group (torch requires it); only leaders use it, from the replication thread.
            self.leaders_group = dist.new_group(ranks=leaders, backend="gloo",
                                                timeout=timedelta(seconds=commit_timeout_s))
            self._leaders = leaders

    # -- sizing ------------------------------------------------------------------------------------------------
    def check_fits(self, snapshot_bytes: int) -> int:
        """Raise UserError (exit 2) on every rank when the tier cannot fit in some node's memory_dir: each node's
        leader measures its own (every node has its own /dev/shm), the verdicts are gathered, so every rank stops
        with the same message (the first node's that does not fit). Returns this node's need."""
        need, how = peer_ring.node_need(snapshot_bytes, self.num_nodes, self.local_world_size, self.world_size)
        problem = self._setup_problem
        if self.leader and problem is None:
            try:
                problem = self._fit_problem(need, how)
            except OSError as exc:  # a memory_dir that cannot even be measured cannot hold the tier either
                problem = f"checkpoint.memory_dir {self.root}: cannot measure its free space: {exc}"
        verdicts = [problem]
        if self.checkpointer.group is not None and self.world_size > 1:
            verdicts = [None] * self.world_size
            dist.all_gather_object(verdicts, problem, group=self.checkpointer.group)
        problems = [verdict for verdict in verdicts if verdict]
        if problems:
            raise MemoryRoomError(problems[0])
        return need

    def _fit_problem(self, need: int, how: str) -> Optional[str]:
        free = free_bytes(str(self.path))
        # Snapshots and copies of this very run already there are replaced as the tier runs: their space is free.
        free += sum(f.stat().st_size for d in (self.path, self.peers_path) if d.exists()
                    for f in d.rglob("*") if f.is_file())
        if need > HEADROOM * free:
            where = f" on node {self.node} (rank {self.rank})" if self.num_nodes > 1 else ""
            return (
                f"checkpoint.memory_interval_steps: the memory tier needs {_mib(need)}{where} ({how}; model and "
                f"optimizer state) but checkpoint.memory_dir {self.root} has {_mib(free)} free (at most "
                f"{HEADROOM:.0%} of it is used); point checkpoint.memory_dir at a larger tmpfs, or set "
                f"checkpoint.memory_interval_steps to null to turn the tier off")
        return None

    # -- saving ------------------------------------------------------------------------------------------------
    def due(self, step: int, storage_interval: int) -> bool:
        return self.enabled and step % self.interval_steps == 0 and step % storage_interval != 0

    def save(self, step: int, model, optimizer, trainer_state: dict) -> Optional[SaveStats]:
        """Async snapshot of `step` (returns once the staging copy has started); None when the tier is off."""
        busy = self._check_space()
        if not self.enabled:
            return None
        self.saves += 1
        if self.replicated and self.leader:
            # Rank 0's retention is off (node_local): the newest two, and the newest two this node replicated
            # (their copies on the next node are what a resume after losing a node needs this node's files of).
            peer_ring.prune_own(self.path, self.replicated_steps)
        stats = self.checkpointer.save(step, model, optimizer, trainer_state, blocking=False)
        if self.replicated and self.leader and not busy:
            self._replica_thread = threading.Thread(target=self._replicate, args=(step, self.checkpointer._pending,
                                                    stats), name="ddlc-memory-peer-replica", daemon=True)
            self._replica_thread.start()
        return stats

    def _check_space(self) -> bool:
        """After the previous snapshot ended: if it ran out of space on any rank, turn the tier off (all ranks).
        Returns whether a peer replication is still in flight on any node (then this snapshot is not replicated:
        every rank gets the same answer from the same all-reduce)."""
        previous = self.checkpointer.wait()
        busy = self._replica_thread is not None and self._replica_thread.is_alive()
        replica_full = not busy and _out_of_space(self._replica_error)
        saved_full = previous is not None and _out_of_space(previous.error)
        # [a snapshot ran out of space, a replication in flight, -(the lowest rank whose peer copy ran out of
        # space)], on any rank: one all-reduce, so every rank turns the tier off at the same snapshot.
        full = torch.tensor([int(saved_full), int(busy), -self.rank if replica_full else -self.world_size])
        if self.checkpointer.group is not None and self.world_size > 1:
            dist.all_reduce(full, op=dist.ReduceOp.MAX, group=self.checkpointer.group)
        if full[1].item() and self.rank == 0 and not self._skips:
            self._warn("memory tier: the previous peer replication is still in flight; this snapshot is not "
                       "replicated (training does not wait for it; later skips are counted, not reported)")
        self._skips += int(full[1].item())
        copy_full_on = -int(full[2].item())
        if full[0].item() or copy_full_on < self.world_size:
            self.enabled = False
            what = None  # one warning: rank 0 for a snapshot (its outcome, naming the rank, is agreed), else the
            if full[0].item() and self.rank == 0:  # first leader whose copy of its peer's snapshot did not fit
                what = f"a snapshot ran out of space in checkpoint.memory_dir (step {previous.step}: {previous.error})"
            elif not full[0].item() and copy_full_on == self.rank:
                what = (f"{self.peers_path} on node {self.node} ran out of space (peer copy: "
                        f"{self._replica_error})")
            if what:
                self._warn(f"memory tier: {what}; the tier is off for the rest of this run, training goes on with "
                           f"storage checkpoints (raise the tmpfs size or lower the model's state)")
            self.discard()  # each node's leader, its own node's snapshots and copies
        return bool(full[1].item())

    # -- peer replica (multi-node) -------------------------------------------------------------------------------
    def _replicate(self, step: int, save_thread: Optional[threading.Thread], stats) -> None:
        """Leader thread: once snapshot `step` committed, send this node's files of it to the next node's leader
        and store the previous node's files under peers/of-node-<previous>. Errors: a warning; that step is not
        replicated (resume then falls back to an older complete step, or storage)."""
        if save_thread is not None:
            save_thread.join()
        started = time.perf_counter()
        outcome = SaveStats(step=step, blocking_s=0.0)
        try:
            if not stats.committed:  # the same verdict on every rank (the commit is agreed): no leader sends
                return
            name = step_dir(step)
            source = self.path / name
            files = sorted(f for f in os.listdir(source) if (source / f).is_file())
            blobs = [(source / f).read_bytes() for f in files]
            header = json.dumps({"step": step, "node": self.node, "files": [[f, len(b)] for f, b in
                                                                            zip(files, blobs)]}).encode()
            nxt, prev = peer_ring.neighbours(self.node, self.num_nodes)
            got = self._exchange(header, b"".join(blobs), self._leaders[nxt], self._leaders[prev])
            head = json.loads(got[0].decode())
            if head["step"] != step or head["node"] != prev:
                raise RuntimeError(f"node {head['node']} sent step {head['step']}, expected node {prev}'s {step}")
            target = self.peers_path / f"of-node-{head['node']}"
            tmp = target / f"{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            offset = 0
            for file_name, size in head["files"]:
                if "/" in file_name or file_name in ("", ".", ".."):
                    raise RuntimeError(f"bad file name {file_name!r} from the previous node")
                (tmp / file_name).write_bytes(got[1][offset:offset + size])
                offset += size
            peer_ring.remove_step_dir(target / name)
            os.rename(tmp, target / name)  # the replica appears whole or not at all
            peer_ring.prune(target, keep=2)
            self.replications += 1
            self.replicated_steps.append(step)
            del self.replicated_steps[:-2]  # all prune_own protects
            outcome.committed = True
        except Exception as exc:  # noqa: BLE001 (a lost replica is a warning: storage still holds the job)
            self._replica_error = f"{type(exc).__name__}: {exc}"
            previous_node = peer_ring.neighbours(self.node, self.num_nodes)[1]
            # A part-received copy: its space is needed more than its bytes.
            shutil.rmtree(self.peers_path / f"of-node-{previous_node}" / f"{step_dir(step)}.tmp", ignore_errors=True)
            if not _out_of_space(self._replica_error):  # out of space: one warning, from _check_space
                self._warn(f"memory tier: peer replication of step {step} failed: {self._replica_error}")
            outcome.error = self._replica_error
        if self._on_commit is not None and stats.committed:
            outcome.total_s = time.perf_counter() - started
            try:
                self._on_commit(outcome, "peer")
            except Exception:  # noqa: BLE001 (metrics never stop a replication)
                pass

    def _exchange(self, header: bytes, body: bytes, nxt: int, prev: int) -> tuple[bytes, bytes]:
        """Send (header, body) to rank `nxt` and receive the same from rank `prev`, over the leaders' group."""
        group = self.leaders_group
        sizes_out = torch.tensor([len(header), len(body)], dtype=torch.int64)
        sizes_in = torch.zeros(2, dtype=torch.int64)
        for work in (dist.isend(sizes_out, nxt, group=group), dist.irecv(sizes_in, prev, group=group)):
            work.wait()
        out = torch.frombuffer(bytearray(header + body), dtype=torch.uint8) if header or body else None
        into = torch.empty(int(sizes_in.sum()), dtype=torch.uint8)
        works = [dist.isend(out, nxt, group=group), dist.irecv(into, prev, group=group)]
        for work in works:
            work.wait()
        data = into.numpy().tobytes()
        cut = int(sizes_in[0])
        return data[:cut], data[cut:]

    def _inventory(self) -> dict:
        """This node's steps, own and peer copies (peer_ring.inventory)."""
        return peer_ring.inventory(self.path, self.peers_path)

    def _gather_replicas(self, after: int, skip: frozenset = frozenset()) -> Optional[int]:
        """Every rank: agree on the step to resume from the memory tier (None: none complete), never one in `skip`
        (found corrupt), and give every node's own directory all of its files. Returns the step."""
        group = self.checkpointer.load_group if self.world_size > 1 else None
        mine = None
        if self.leader:
            try:
                mine = self._inventory()
            except OSError as exc:  # this node's copies are unusable; the others may still make a complete set
                self._warn(f"memory tier: cannot list {self.path} and its peer copies: {exc}")
                mine = {"found": {}, "commits": {}}
        inventories = [mine]
        if group is not None:
            inventories = [None] * self.world_size
            dist.all_gather_object(inventories, mine, group=group)
        box = [peer_ring.plan(inventories, after, skip) if self.rank == 0 else None]
        if group is not None:
            dist.broadcast_object_list(box, src=0, group=group)
        plan = box[0]
        if self.leader:
            mine = inventories[self.rank]["found"]
            # Newer steps are incomplete somewhere (never loaded), and would mix with this run's later snapshots.
            places = [self.path, *(self.peers_path.iterdir() if self.peers_path.exists() else [])]
            for child in [child for place in places for child in place.iterdir()]:
                step = parse_step(child.name)
                if child.is_dir() and step is not None and (plan is None or step > plan["step"]):
                    peer_ring.remove_step_dir(child)
            if plan is not None:
                self._fill(plan, mine)
        if group is not None:
            dist.barrier(group=group)
        return plan["step"] if plan else None

    def _holds_peer_copies(self) -> bool:
        """This node holds copies of another node's snapshots (the same answer on every rank of a single node)."""
        return self.peers_path.exists() and any(self.peers_path.glob("*/step-*"))

    def _fill(self, plan: dict, mine: dict) -> None:
        """Leaders: broadcast each file of the plan from its holder; write the ones this node lacks (COMMIT last)."""
        name = plan["name"]
        have = mine.get("own", {}).get(name, {})
        target = self.path / name
        target.mkdir(parents=True, exist_ok=True)
        order = sorted(plan["holders"], key=lambda f: (f == COMMIT, f))
        for file_name in order:
            holder, place, expected = plan["holders"][file_name]
            size = torch.zeros(1, dtype=torch.int64)
            data = None
            if self.rank == holder:
                where = self.path if place == "own" else self.peers_path / place
                try:
                    raw = (where / name / file_name).read_bytes()
                except OSError as exc:  # sent empty: the size check of the verified load then rejects the step
                    self._warn(f"memory tier: cannot read {where / name / file_name}: {exc}")
                    raw = b""
                size[0] = len(raw)
                data = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else None
            if self.leaders_group is not None:  # else one node now: it holds every file of the plan itself
                dist.broadcast(size, src=holder, group=self.leaders_group)
            if data is None:
                data = torch.empty(int(size), dtype=torch.uint8)
            if int(size) and self.leaders_group is not None:
                dist.broadcast(data, src=holder, group=self.leaders_group)
            if have.get(file_name) != expected:
                try:  # a write that fails leaves the file missing: the verified load then rejects the step
                    tmp = target / f".{file_name}.part"
                    tmp.write_bytes(data.numpy().tobytes())
                    os.rename(tmp, target / file_name)
                except OSError as exc:  # every leader still takes part in every broadcast of the plan
                    self._warn(f"memory tier: cannot write {target / file_name}: {exc}")

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
        # Multi-node, or a node of a multi-node job restarted alone (it may hold its own files and a peer's copy:
        # a complete set reshards): the newest step complete across own and peer copies, gathered on every node.
        if self.replicated or self._holds_peer_copies():
            box = [after]
            if self.world_size > 1:
                dist.broadcast_object_list(box, src=0, group=self.checkpointer.load_group)
            corrupt: dict[str, str] = {}
            while True:  # a complete step that fails verification: the next older complete one, else storage
                chosen = self._gather_replicas(box[0], frozenset(corrupt))
                if chosen is None:
                    self.checkpointer._known_corrupt = corrupt
                    return None
                restored = self.checkpointer.resume(model, optimizer, check_hashes=check_hashes,
                                                    after_step=chosen - 1)
                if restored is not None:  # (the verdict is agreed: every rank leaves or loops together)
                    break
                corrupt.update(self.checkpointer._known_corrupt or {step_dir(chosen): "rejected"})
        else:
            restored = self.checkpointer.resume(model, optimizer, check_hashes=check_hashes, after_step=after)
        if restored is None:
            return None
        if self.rank == 0 and peek is not None:
            from ddlc.checkpoint.lineage import new_lineage

            storage.lineage = peek.lineage or new_lineage()
            storage._last_seq = peek.highest_seq
        return restored

    def discard(self) -> None:
        """Each node's leader: remove every snapshot of this run on its node, peer copies included (stale after a
        storage resume, or after the final save)."""
        if not self.leader:
            return
        self._join_replica()
        shutil.rmtree(self.peers_path, ignore_errors=True)
        for child in list(self.path.iterdir()) if self.path.exists() else []:
            if child.is_dir():
                peer_ring.remove_step_dir(child)
            else:
                child.unlink(missing_ok=True)

    def _join_replica(self) -> None:
        if self._replica_thread is not None:
            self._replica_thread.join()
            self._replica_thread = None

    def close(self) -> None:
        self.checkpointer.close()
        self._join_replica()
