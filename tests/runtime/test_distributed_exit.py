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


def _one_rank_group(tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():  # left by an earlier in-process test of the session: leaving it is what is tested
        dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)


@pytest.mark.parametrize("ending, waits", [
    ("returns", True), ("user-error", True), ("checkpoint-error", True),
    ("collective-broke", False), ("interrupted", False)])
def test_rank_zero_waits_for_its_peers_only_when_they_can_still_come(tmp_path, monkeypatch, ending, waits):
    # A collective that failed because a peer died: waiting for that peer to say it is done held the surviving
    # rank 0 for 30 s, past torchrun's shutdown grace, on every worker restart.
    import torch.distributed as dist

    from ddlc.checkpoint.errors import CheckpointSaveError
    from ddlc.errors import UserError
    from ddlc.runtime import distributed
    from ddlc.runtime.entry import train_then_leave

    waited = []
    monkeypatch.setattr(distributed, "_leave_store_last", lambda *a, **k: waited.append(True))
    raised = {"user-error": UserError("bad"), "checkpoint-error": CheckpointSaveError("final save failed"),
              "collective-broke": RuntimeError("[gloo] Connection closed by peer"),
              "interrupted": KeyboardInterrupt()}

    def train(cfg, ctx):
        if ending in raised:
            raise raised[ending]
        return "result"

    _one_rank_group(tmp_path)
    try:
        if ending == "returns":
            assert train_then_leave(train, None, None, distributed.shutdown_distributed) == "result"
        else:
            with pytest.raises(type(raised[ending])):
                train_then_leave(train, None, None, distributed.shutdown_distributed)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert bool(waited) is waits
    assert not dist.is_initialized()  # the group is left either way
