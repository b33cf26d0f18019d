"""The memory tier's peer ring (checkpoint/peer_ring.py) for 2 to 5 nodes, on real directories and COMMIT files.

A snapshot is laid out as the tier lays it out (node i's own files in its memory_dir, rank 0's node also COMMIT;
node i's files copied to node (i+1) % N); the ring's decisions are checked against every node that can be lost:
the survivors' inventories (peer_ring.inventory) must give a plan (peer_ring.plan) that holds every file of the
snapshot, none of them from the lost node. And the retention of a node's own snapshots (peer_ring.prune_own) keeps
the step its peer holds a copy of, whatever snapshots were not replicated in between.
"""

import json
from pathlib import Path

import pytest

from ddlc.checkpoint import peer_ring
from ddlc.checkpoint.manifest import COMMIT, FileEntry, Manifest, step_dir


def _write(path: Path, data: bytes) -> FileEntry:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    import hashlib
    return FileEntry(size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _snapshot(hosts: list[Path], step: int, ranks_per_node: int = 1) -> None:
    """Step `step` of a job on len(hosts) nodes: each node's own files, COMMIT on node 0, then the ring's copies."""
    name = step_dir(step)
    nodes = len(hosts)
    files: dict[str, FileEntry] = {}
    owned: dict[int, list[str]] = {}
    for node, host in enumerate(hosts):
        for local in range(ranks_per_node):
            rank = node * ranks_per_node + local
            for file_name, data in ((f"__{rank}_0.distcp", bytes([rank]) * (100 + rank + step)),
                                    (f"rng-rank{rank:08d}.pt", b"rng" * (rank + 1))):
                files[file_name] = _write(host / "run" / name / file_name, data)
                owned.setdefault(node, []).append(file_name)
    for file_name in (".metadata", "trainer_state.json"):
        files[file_name] = _write(hosts[0] / "run" / name / file_name, json.dumps({"step": step}).encode())
        owned[0].append(file_name)
    manifest = Manifest(step=step, files=files, world_size=nodes * ranks_per_node)
    (hosts[0] / "run" / name / COMMIT).write_text(manifest.to_json())
    owned[0].append(COMMIT)
    for node, host in enumerate(hosts):
        successor, _ = peer_ring.neighbours(node, nodes)
        for file_name in owned[node]:
            copy = hosts[successor] / "run.peers" / f"of-node-{node}" / name / file_name
            _write(copy, (host / "run" / name / file_name).read_bytes())


def _inventories(hosts: list[Path], lost: set[int], ranks_per_node: int = 1) -> list:
    """By rank, as the resume gathers them: each node's leader lists its own files and copies; a lost node's
    replacement comes back with an empty memory_dir."""
    out = []
    for node, host in enumerate(hosts):
        for local in range(ranks_per_node):
            if local:
                out.append(None)
            elif node in lost:
                out.append(peer_ring.inventory(host / "replacement", host / "replacement.peers"))
            else:
                out.append(peer_ring.inventory(host / "run", host / "run.peers"))
    return out


@pytest.mark.parametrize("nodes", [2, 3, 4, 5])
def test_ring_sends_each_node_to_exactly_one_other(nodes):
    successors = [peer_ring.neighbours(node, nodes)[0] for node in range(nodes)]
    predecessors = [peer_ring.neighbours(node, nodes)[1] for node in range(nodes)]
    assert sorted(successors) == list(range(nodes)) and all(s != n for n, s in enumerate(successors))
    assert all(peer_ring.neighbours(successors[n], nodes)[1] == n for n in range(nodes))
    assert predecessors == [(n - 1) % nodes for n in range(nodes)]
    assert peer_ring.leaders(nodes, 4) == [4 * n for n in range(nodes)]


@pytest.mark.parametrize("nodes, ranks_per_node", [(2, 1), (3, 1), (4, 2), (5, 1)])
def test_any_one_lost_node_is_restored_from_its_successors_copy(tmp_path, nodes, ranks_per_node):
    hosts = [tmp_path / f"host{n}" for n in range(nodes)]
    for step in (4, 8):
        _snapshot(hosts, step, ranks_per_node)
    every_file = set(json.loads((hosts[0] / "run" / step_dir(8) / COMMIT).read_text())["files"]) | {COMMIT}
    for lost in range(nodes):
        plan = peer_ring.plan(_inventories(hosts, {lost}, ranks_per_node), after=0)
        assert plan is not None and plan["step"] == 8, lost
        assert set(plan["holders"]) == every_file
        lost_ranks = range(lost * ranks_per_node, (lost + 1) * ranks_per_node)
        assert not any(rank in lost_ranks for rank, _, _ in plan["holders"].values())
        # The lost node's own files come from the copy on the node after it.
        successor = peer_ring.neighbours(lost, nodes)[0]
        lost_files = [f for f in every_file if any(f.startswith(f"__{r}_") for r in lost_ranks)]
        assert {plan["holders"][f][:2] for f in lost_files} == {(successor * ranks_per_node, f"of-node-{lost}")}
    # Storage at step 8 or newer: nothing in memory is newer.
    assert peer_ring.plan(_inventories(hosts, set(), ranks_per_node), after=8) is None


@pytest.mark.parametrize("nodes, lost, complete", [
    (2, {0, 1}, False),  # both hosts: nothing left
    (3, {0, 1}, False),  # adjacent: node 0's files were only on nodes 0 and 1
    (3, {1, 2}, False),
    (4, {0, 2}, True),   # not adjacent: node 1 holds node 0's copy, node 3 holds node 2's
    (5, {1, 3}, True),
])
def test_two_lost_nodes(tmp_path, nodes, lost, complete):
    hosts = [tmp_path / f"host{n}" for n in range(nodes)]
    _snapshot(hosts, 4)
    plan = peer_ring.plan(_inventories(hosts, lost), after=0)
    assert (plan is not None) == complete, plan


def test_a_file_of_the_wrong_size_makes_the_step_incomplete(tmp_path):
    hosts = [tmp_path / f"host{n}" for n in range(3)]
    _snapshot(hosts, 4)
    _snapshot(hosts, 8)
    copy = hosts[2] / "run.peers" / "of-node-1" / step_dir(8) / "__1_0.distcp"
    copy.write_bytes(copy.read_bytes()[:-1])  # torn copy of the lost node's shard
    plan = peer_ring.plan(_inventories(hosts, {1}), after=0)
    assert plan is not None and plan["step"] == 4


def test_own_retention_keeps_the_steps_the_peer_holds_copies_of(tmp_path):
    """Snapshots every 4 steps; only some are replicated (the previous copy was still in flight for the others).
    After each snapshot, the newest replicated step must still be complete with node 0's own files plus its
    peer's copies (node 1 lost), and so must the one before it (node 1 lost while sending the newest)."""
    hosts = [tmp_path / "host0", tmp_path / "host1"]
    replicated: list[int] = []
    for step in range(4, 80, 4):
        for host in hosts:  # what MemoryTier.save does on each node's leader before writing the next snapshot
            peer_ring.prune_own(host / "run", replicated)
        _snapshot(hosts, step)
        if step % 20 in (4, 8):  # replicated; the others were skipped
            replicated.append(step)
        else:  # not replicated: no copy of this step arrives
            for node in (0, 1):
                peer_ring.remove_step_dir(hosts[1 - node] / "run.peers" / f"of-node-{node}" / step_dir(step))
        for host in hosts:
            peer_ring.prune(host / "run.peers" / f"of-node-{1 - hosts.index(host)}", keep=2)
        if replicated:
            plan = peer_ring.plan(_inventories(hosts, {1}), after=0)
            assert plan is not None and plan["step"] == replicated[-1], (step, replicated, plan)
        if len(replicated) >= 2:  # node 1 died while sending the newest: its copy never arrived
            newest = hosts[0] / "run.peers" / "of-node-1" / step_dir(replicated[-1])
            aside = newest.with_name("aside")
            newest.rename(aside)
            plan = peer_ring.plan(_inventories(hosts, {1}), after=0)
            aside.rename(newest)
            assert plan is not None and plan["step"] == replicated[-2], (step, replicated, plan)
    own = sorted(int(d.name.split("-")[1]) for d in (hosts[0] / "run").iterdir())
    assert len(own) <= 4  # the newest two and the newest two replicated


def test_prune_removes_debris_and_never_leaves_a_half_deleted_step(tmp_path):
    run = tmp_path / "run"
    for step in (4, 8, 12):
        _write(run / step_dir(step) / "a", b"x")
    (run / f"{step_dir(16)}.tmp").mkdir()
    (run / f"{peer_ring.REMOVING}{step_dir(0)}-abc").mkdir()
    peer_ring.prune(run, keep=1, protect=[4])
    assert sorted(child.name for child in run.iterdir()) == [step_dir(4), step_dir(12)]
    peer_ring.remove_step_dir(run / step_dir(99))  # gone already: nothing to do


def test_node_need_counts_the_peer_copies():
    whole = 100 << 20
    assert peer_ring.node_need(whole, 1, 8, 8)[0] == 3 * whole
    need, how = peer_ring.node_need(whole, 2, 8, 16)
    assert need == whole + 7 * (whole // 2) and "peer copies" in how
    assert peer_ring.node_need(whole, 4, 8, 32)[0] == whole + 7 * (whole // 4)


def test_a_step_found_corrupt_is_skipped_for_the_next_older_complete_one(tmp_path):
    hosts = [tmp_path / f"host{n}" for n in range(2)]
    for step in (4, 8):
        _snapshot(hosts, step)
    inventories = _inventories(hosts, {1})
    assert peer_ring.plan(inventories, after=0)["step"] == 8
    assert peer_ring.plan(inventories, after=0, skip=frozenset({step_dir(8)}))["step"] == 4
    assert peer_ring.plan(inventories, after=4, skip=frozenset({step_dir(8)})) is None
