"""Randomised kill -9 / corrupt / resume rounds on one store, seeded and bounded in time.

Invariant, checked after every fault: a verified checkpoint at least as new (commit order) as the newest verified
one before the fault survives, `latest` names a verified checkpoint, and every resume loads the newest verified
checkpoint with exactly the weights it recorded. Corruptions (flipped bytes, truncation, broken or missing COMMIT,
corrupt .metadata, `latest` leaving the root, deleted directories, debris) are applied between the lives of a
worker process (chaos_worker.py); kill -9 lands at random moments, mid-save included.
"""

from __future__ import annotations

import json

import os
import random
import signal
import subprocess
import time

from ddlc.checkpoint import catalog
from ddlc.checkpoint.storage import CheckpointStore
from tests.support import PYTHON, REPO, child_env

WORKER = REPO / "tests" / "checkpoint" / "chaos_worker.py"
SEED = int(os.environ.get("DDLC_CHAOS_SEED", "12"))
# Seconds of kill rounds in `make test`, and the fewest kills however slow the machine; a longer soak:
# DDLC_CHAOS_SEED=7 DDLC_CHAOS_BUDGET_S=900 .venv/bin/pytest tests/checkpoint/test_chaos.py
BUDGET_S = float(os.environ.get("DDLC_CHAOS_BUDGET_S", "30"))
MIN_KILLS = 5


def _newest(store) -> list | None:
    newest = catalog.newest_verified(catalog.scan(store, check_hashes=True))
    return list(newest.order) if newest else None


def test_random_kills_and_corruptions_never_lose_the_newest_good_checkpoint(tmp_path):
    rng = random.Random(SEED)
    store_dir, reference_file = tmp_path / "ck", tmp_path / "reference.json"
    store = CheckpointStore(str(store_dir))
    deadline = time.monotonic() + BUDGET_S
    kills = lives = 0
    log = []
    while time.monotonic() < deadline or kills < MIN_KILLS:
        proc = subprocess.Popen([PYTHON, str(WORKER), str(store_dir), str(rng.randrange(1 << 30)), "1000",
                                 str(reference_file)], env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # the first life is done: torch is imported, saves are under way
        assert first, proc.stderr.read()[-4000:]
        time.sleep(rng.uniform(0.0, 1.5))
        before = _newest(store)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, f"worker failed before the kill:\n{first}{out}\n{err[-4000:]}"
        lives += 1 + out.count("\n")
        kills += 1
        log += [first, out]
        after = _newest(store)
        assert before is None or (after is not None and after >= before), (before, after, "".join(log)[-3000:])
        reference_file.write_text(json.dumps(after))
    # A last run of a few lives, uninterrupted: every check in the worker must hold to the end.
    final = subprocess.run([PYTHON, str(WORKER), str(store_dir), str(SEED), "5", str(reference_file)],
                           env=child_env(), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0 and "done" in final.stdout, final.stdout[-2000:] + final.stderr[-4000:]
    lives += 5
    assert kills >= MIN_KILLS and lives >= 10, (kills, lives)
    print(f"seed {SEED}: {kills} kills, {lives} lives")
