"""Rank 0 hosts the job's store: it leaves after the other ranks are done with it (#13: a committed final
checkpoint was reported as a failed save, exit 74, when rank 0's exit took the store away mid-read)."""

from pathlib import Path

import pytest

from tests.support import REPO, assert_ok, run, torchrun

WORKER = Path(__file__).with_name("store_exit_worker.py")


@pytest.mark.parametrize("share_agent_store", ["0", "1"], ids=["env-store", "own-store"])
def test_rank_zero_keeps_the_store_until_the_others_leave(tmp_path, share_agent_store):
    # "1": torchrun's shared agent store, where ddlc starts its own store in rank 0; "0": env://, rank 0 hosts it.
    env = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "0" if share_agent_store == "1" else "1"}
    proc = run(torchrun("--standalone", "--nproc-per-node", "2", str(WORKER)), cwd=REPO, timeout=120, **env)
    assert_ok(proc)
    assert "rank 1 read committed" in proc.stdout
