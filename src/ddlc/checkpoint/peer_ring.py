"""The memory tier's peer ring, as plain decisions (no I/O but directory removal): who sends to whom, which
snapshots a node keeps, which step a resume can take, and how much room a node needs.

    leaders [0, L, 2L, ...] (one per node, L ranks a node): node i sends to node (i+1) % N, receives from (i-1) % N
    node i's memory_dir:  <run>/step-S        its own ranks' files of S (node 0: also .metadata, trainer state, COMMIT)
                          <run>.peers/of-node-(i-1)/step-S   the previous node's files of S (newest two)
    keep (own, multi-node):  the newest `keep` steps + the newest `keep` steps this node completed replicating
                             (sent its files and stored its predecessor's), so the step each node's successor
                             holds a copy of is still complete on every other node when one node is lost.
    plan (resume):           the newest step > storage's whose COMMIT-listed files are all held by some node
                             (own or copy) with their recorded sizes.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Iterable, Optional

from ddlc.checkpoint.manifest import COMMIT, parse_commit, parse_step

REMOVING = ".removing-"  # prefix of a step directory being deleted (renamed first: never seen half-deleted)


def leaders(num_nodes: int, local_world_size: int) -> list[int]:
    """The global rank of each node's first rank (its leader), by node."""
    return [node * local_world_size for node in range(num_nodes)]


def neighbours(node: int, num_nodes: int) -> tuple[int, int]:
    """(the node this one sends its snapshot to, the node whose snapshot it keeps a copy of)."""
    return (node + 1) % num_nodes, (node - 1) % num_nodes


def steps_to_remove(steps: Iterable[int], keep: int, protect: Iterable[int] = ()) -> list[int]:
    """All `steps` but the newest `keep` and the `protect`ed ones."""
    ordered = sorted(set(steps))
    kept = set(ordered[-keep:] if keep else []) | set(protect)
    return [step for step in ordered if step not in kept]


def remove_step_dir(path: Path) -> None:
    """Delete a snapshot directory atomically as seen by a reader: rename it aside, then delete it (a process
    killed or stopped part-way leaves hidden debris, never a step directory with some files gone)."""
    aside = path.with_name(f"{REMOVING}{path.name}-{uuid.uuid4().hex[:6]}")
    try:
        path.rename(aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def prune(directory: Path, keep: int, protect: Iterable[int] = ()) -> None:
    """Remove all but the newest `keep` (and `protect`ed) step directories under `directory`, and debris (.tmp
    copies being received, directories being removed)."""
    if not directory.exists():
        return
    steps = {parse_step(child.name): child for child in directory.iterdir()
             if child.is_dir() and parse_step(child.name) is not None}
    for step in steps_to_remove(steps, keep, protect):
        remove_step_dir(steps[step])
    for child in directory.iterdir():
        if child.name.endswith(".tmp") or child.name.startswith(REMOVING):
            shutil.rmtree(child, ignore_errors=True)


def inventory(own: Path, peers: Path) -> dict:
    """One node's steps, own (`own`/step-S) and copies (`peers`/of-node-i/step-S): {"found": {place: {step dir:
    {file: size}}}, "commits": {step dir: COMMIT bytes}} (place: "own" or "of-node-<i>")."""
    places = {"own": own}
    if peers.exists():
        places.update({child.name: child for child in peers.iterdir() if child.is_dir()})
    found, commits = {}, {}
    for place, directory in places.items():
        steps = {}
        for child in directory.iterdir() if directory.exists() else []:
            if child.is_dir() and parse_step(child.name) is not None:
                steps[child.name] = {f.name: f.stat().st_size for f in child.iterdir() if f.is_file()}
                if COMMIT in steps[child.name] and child.name not in commits:
                    commits[child.name] = (child / COMMIT).read_bytes()
        found[place] = steps
    return {"found": found, "commits": commits}


def prune_own(directory: Path, replicated_steps: list[int], keep: int = 2) -> None:
    """A leader's own snapshots, before it writes the next one: keep the newest `keep` and the newest `keep` it
    replicated (the next node's copies are of those steps, and a resume after losing that node's predecessor needs
    every other node's own files of the same step)."""
    prune(directory, keep=keep, protect=replicated_steps[-keep:])


def plan(inventories: list, after: int, skip: Iterable[str] = ()) -> Optional[dict]:
    """The newest step > `after` (not named in `skip`: found corrupt) whose COMMIT-listed files are all held by
    some leader with their recorded sizes.

    inventories: by rank, None for a non-leader, else {"found": {place: {step dir: {file: size}}}, "commits":
    {step dir: COMMIT bytes}} (place: "own" or "of-node-<i>"). Returns {"step", "name", "holders": {file: (rank,
    place, size)}} or None."""
    skip = set(skip)
    commits = {}
    for inventory in inventories:
        if inventory:
            commits.update(inventory["commits"])
    for name in sorted(commits, key=parse_step, reverse=True):
        if parse_step(name) <= after:
            break
        if name in skip:
            continue
        manifest = parse_commit(commits[name], name).manifest
        if manifest is None:  # another number of ranks is fine: DCP reshards a complete set of files
            continue
        need = {f: entry.size for f, entry in manifest.files.items()}
        need[COMMIT] = None
        holders = {}
        for rank, inventory in enumerate(inventories):
            for place, steps in (inventory or {"found": {}})["found"].items():
                for f, size in steps.get(name, {}).items():
                    if f in need and (need[f] is None or need[f] == size) and f not in holders:
                        holders[f] = (rank, place, size)
        if len(holders) == len(need):
            return {"step": parse_step(name), "name": name, "holders": holders}
    return None


# Peak snapshots in a node's memory_dir. One node: two kept + one being written. Several nodes, per node: own
# files of the newest two, of the two newest replicated steps, and of the one being written; copies of the previous
# node's newest two plus one being received; after a resume from the tier, one whole step (every node's files).
SNAPSHOTS_AT_PEAK = 3
OWN_AT_PEAK, COPIES_AT_PEAK = 5, 3


def node_need(whole: int, num_nodes: int, local_world_size: int, world_size: int) -> tuple[int, str]:
    """Bytes the tier may hold at once in one node's memory_dir, given one whole snapshot's bytes, and how."""
    if num_nodes <= 1:
        return SNAPSHOTS_AT_PEAK * whole, f"{SNAPSHOTS_AT_PEAK} x {_mib(whole)}: two kept snapshots and one being " \
                                          f"written"
    share = -(-whole * local_world_size // world_size)  # this node's ranks' part of a snapshot (rounded up)
    need = whole + (OWN_AT_PEAK - 1 + COPIES_AT_PEAK) * share
    return need, (f"{_mib(whole)} for a whole snapshot after a resume + {OWN_AT_PEAK - 1 + COPIES_AT_PEAK} x "
                  f"{_mib(share)} of this node's share: its newest and newest replicated snapshots, the one being "
                  f"written, and its peer copies")


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
