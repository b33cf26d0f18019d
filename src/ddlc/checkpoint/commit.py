"""The commit protocol: turn the files every rank wrote into one committed checkpoint, then keep the store tidy.

    every rank: own_file_digests() --{name: size, sha256}--> (agreement "written") --> rank 0:
    rank 0:     build_manifest() (hash anything unlisted, check nothing vanished)
                --> write COMMIT (last; atomic) --> move `latest` --> decision "committed" to every rank
                --> retention: catalog.scan + retention.plan + catalog.apply (latest repointed before deleting)

A directory without a COMMIT that reads never counts. The manifest is the same pydantic model `read_commit`
validates with, stamped with the run's lineage and its commit order (`seq`), which is what "newer" means.
"""

from __future__ import annotations

import json
from typing import Optional

from ddlc.checkpoint.manifest import COMMIT, TRAINER_STATE, Manifest, hash_files, parse_step, read_commit
from ddlc.checkpoint.storage import CheckpointStore
from ddlc.checkpoint.write_digests import take_write_digests


def rng_file(rank: int) -> str:
    return f"rng-rank{rank:05d}.pt"


def own_files(store: CheckpointStore, directory: str, rank: int) -> dict[str, int]:
    """{name: size} of the files `rank` wrote into `directory` (rank 0 also owns .metadata and trainer state)."""
    mine = {}
    for info in store.list_files(directory):
        name = info.name
        if name.startswith(f"__{rank}_") or name == rng_file(rank):
            mine[name] = info.size
        elif rank == 0 and name in (".metadata", TRAINER_STATE):
            mine[name] = info.size
    return mine


def own_file_digests(store: CheckpointStore, writer, directory: str, rank: int) -> dict[str, dict]:
    """{name: {size, sha256}} for the files this rank wrote. Shards digested while DCP wrote them count when the
    file on disk still has the size that was digested; everything else is hashed by reading it back."""
    own = own_files(store, directory, rank)
    written = take_write_digests(writer, store.path(directory))
    files = {name: digest for name, digest in written.items() if own.get(name) == digest["size"]}
    files.update(hash_files(store, directory, sorted(name for name in own if name not in files)))
    return files


def highest_seq(store: CheckpointStore) -> int:
    """The highest commit order recorded in this store (0 when none)."""
    best = 0
    for name in store.list_dirs():
        if parse_step(name) is not None:
            manifest = read_commit(store, name).manifest
            if manifest is not None:
                best = max(best, manifest.seq)
    return best


def build_manifest(store: CheckpointStore, directory: str, step: int, reported: list[dict[str, dict]],
                   world_size: int, lineage: Optional[str], seq: int, node_local: bool = False) -> Manifest:
    """node_local: other ranks' files live on other nodes (the memory tier of a multi-node job): only the
    committer's own reported files must be present here; the others are recorded as those ranks reported them."""
    files: dict[str, dict] = {}
    for rank_files in reported:
        files.update(rank_files)
    present = {f.name for f in store.list_files(directory)}
    unlisted = sorted(n for n in present if n not in files and n != COMMIT)
    files.update(hash_files(store, directory, unlisted))
    expected = set(reported[0]) | set(unlisted) if node_local and reported else files
    missing = sorted(n for n in expected if n not in present)
    if missing:
        raise FileNotFoundError(f"files recorded by a rank are gone from {store.display(directory)}: {missing}")
    trainer_state = json.loads(store.read_text(f"{directory}/{TRAINER_STATE}"))
    return Manifest(step=step, files=files, world_size=world_size,
                    extra={"trainer_state": trainer_state, "lineage": lineage, "seq": seq})


def write_commit(store: CheckpointStore, directory: str, manifest: Manifest) -> None:
    """COMMIT last (atomic), then `latest`: a reader sees the old checkpoint or the complete new one."""
    store.write_text_atomic(f"{directory}/{COMMIT}", manifest.to_json())
    store.write_text_atomic("latest", directory + "\n")
