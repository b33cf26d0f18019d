"""Lives of a small training job on one checkpoint store, with a seeded fault after each (see test_chaos.py).

    chaos_worker.py STORE SEED LIVES REFERENCE_FILE

Each life: resume (or, if every checkpoint is broken, check that resume refuses, then start fresh with the old ones
moved aside), check the loaded state is the one its checkpoint recorded, train a few steps with async and blocking
saves under a random keep_last/interval, close, check the invariant, then corrupt the store in a random way and
record the newest verified checkpoint that survived the fault (REFERENCE_FILE) for the next life — or the next
process, when the test kills this one with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import torch

from ddlc.checkpoint import Checkpointer, catalog, retention
from ddlc.checkpoint.manifest import COMMIT, read_commit
from ddlc.errors import UserError


def params_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().numpy().tobytes())
    return digest.hexdigest()


def newest_verified_order(store) -> list | None:
    newest = catalog.newest_verified(catalog.scan(store, check_hashes=True))
    return list(newest.order) if newest else None


def check_invariant(store, reference: list | None, where: str) -> None:
    now = newest_verified_order(store)
    if reference is not None:
        assert now is not None and now >= reference, f"{where}: newest verified {now} older than {reference}"
    pointer = catalog.latest_pointer(store)
    if now is not None:
        entries = {e.name: e for e in catalog.scan(store, check_hashes=True)}
        assert pointer in entries and entries[pointer].state == retention.VERIFIED, \
            f"{where}: latest -> {pointer!r}, not a verified checkpoint"


def fault(store, rng: random.Random) -> str:
    root = Path(store.path())
    dirs = sorted(p for p in root.glob("step-*") if p.is_dir())
    kind = rng.choice(["none", "flip", "truncate", "commit-garbage", "commit-delete", "metadata", "latest",
                       "rmdir", "debris"])
    if not dirs and kind not in ("latest", "debris"):
        return "none"
    # The newest checkpoint is the one whose loss hurts: aim there most of the time.
    victim = (dirs[-1] if rng.random() < 0.6 else rng.choice(dirs)) if dirs else None
    files = sorted(p for p in victim.rglob("*") if p.is_file() and p.name != COMMIT) if victim else []
    if kind in ("flip", "truncate") and files:
        target = rng.choice(files)
        data = bytearray(target.read_bytes())
        if data and kind == "flip":
            data[rng.randrange(len(data))] ^= 0xFF
        elif data:
            data = data[: rng.randrange(len(data))]
        target.write_bytes(bytes(data))
    elif kind == "commit-garbage" and (victim / COMMIT).exists():
        (victim / COMMIT).write_bytes(rng.choice([b"[]", b"\xff\xfe", b'{"files": 1}', b"{"]))
    elif kind == "commit-delete" and (victim / COMMIT).exists():
        (victim / COMMIT).unlink()
    elif kind == "metadata" and (victim / ".metadata").exists():
        data = bytearray((victim / ".metadata").read_bytes())
        data[rng.randrange(len(data))] ^= 0x5A
        (victim / ".metadata").write_bytes(bytes(data))
    elif kind == "latest":
        (root / "latest").write_text(rng.choice(["../../etc\n", "/tmp\n", "step-99999999\n", "\n"]))
    elif kind == "rmdir":
        import shutil

        shutil.rmtree(victim)
    elif kind == "debris":
        junk = root / f"step-{rng.randrange(1, 400):08d}"
        if not junk.exists():
            junk.mkdir()
            (junk / "__0_0.distcp").write_bytes(b"partial")
    return kind


def life(store_uri: str, rng: random.Random, reference: list | None, log) -> list | None:
    torch.manual_seed(rng.randrange(1 << 30))
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    keep_last, interval = rng.choice([1, 2, 3]), rng.choice([2, 3, 5])
    warnings: list[str] = []
    ckpt = Checkpointer(store_uri, keep_last=keep_last, warn=warnings.append)
    store = ckpt.store
    try:
        state = ckpt.resume(model, optimizer)
    except UserError as refusal:
        assert reference is None, f"refused although {reference} verified: {refusal}"
        assert "every checkpoint" in str(refusal)
        ckpt.start_fresh("move_aside")
        state = None
        log("refused, started fresh with the old checkpoints moved aside")
    if reference is not None:
        assert state is not None, "a verified checkpoint existed but nothing was resumed"
        resumed = read_commit(store, ckpt.resumed_from).manifest
        assert list(resumed.order) >= reference, f"resumed {ckpt.resumed_from} {resumed.order} < {reference}"
    if state is not None:
        assert state["params"] == params_digest(model), f"loaded weights differ from {ckpt.resumed_from}'s"
    verified_at_start = {e.name for e in catalog.scan(store, check_hashes=True) if e.state == retention.VERIFIED}
    step = state["step"] if state else 0
    last = step + rng.randrange(1, 7)
    while step < last:
        step += 1
        model(torch.randn(8, 16)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % interval == 0 or step == last:
            ckpt.save(step, model, optimizer, {"step": step, "params": params_digest(model)},
                      blocking=step == last or rng.random() < 0.3)
    ckpt.close()
    check_invariant(store, reference, f"after life to step {last} (keep_last={keep_last})")
    # Retention never leaves fewer than keep_last verified checkpoints when that many existed.
    available = verified_at_start | {f"step-{s.step:08d}" for s in ckpt.history if s.committed}
    verified_now = [e for e in catalog.scan(store, check_hashes=True) if e.state == retention.VERIFIED]
    assert len(verified_now) >= min(keep_last, len(available)), \
        f"{len(verified_now)} verified left of {sorted(available)} with keep_last={keep_last}"
    kind = fault(store, rng)
    after = newest_verified_order(store)
    log(f"life to step {last} keep_last={keep_last} interval={interval}; fault {kind}; newest verified {after}")
    return after


def main() -> None:
    store_uri, seed, lives, reference_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    rng = random.Random(seed)
    for _ in range(lives):
        reference = json.loads(reference_file.read_text()) if reference_file.exists() else None
        reference = life(store_uri, rng, reference, lambda message: print(message, flush=True))
        reference_file.write_text(json.dumps(reference))
    print("done", flush=True)


if __name__ == "__main__":
    main()
