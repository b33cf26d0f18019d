"""After a resume, an optimizer with no state when the checkpoint had state is an error on every rank (issue #13).

The DDP/FSDP2/DeepSpeed/Horovod stop-and-resume tests run the guard on every resume and must pass it; here it
must fire: Horovod's old resume path (zero gradients left on the parameters) made DCP load no optimizer state.
"""

import pytest
import torch

from ddlc.checkpoint.optimizer_guard import OptimizerNotRestored, check_optimizer_restored, optimizer_state_entries
from tests.support import REPO, run, torchrun

WORKER = REPO / "tests" / "checkpoint" / "optimizer_guard_worker.py"


def test_guard_decides_from_what_the_checkpoint_recorded():
    model = torch.nn.Linear(2, 2)
    fresh = torch.optim.AdamW(model.parameters())
    with pytest.raises(OptimizerNotRestored, match="optimizer state was not restored"):
        check_optimizer_restored(fresh, {"step": 5, "optimizer_state_entries": 2})
    with pytest.raises(OptimizerNotRestored):
        check_optimizer_restored(fresh, {"step": 5})  # older checkpoints: a step was taken, so AdamW had state
    check_optimizer_restored(fresh, {"step": 5, "optimizer_state_entries": 0})  # e.g. plain SGD: nothing to lose
    check_optimizer_restored(fresh, {"step": 0})
    model(torch.ones(1, 2)).sum().backward()
    fresh.step()
    assert optimizer_state_entries(fresh) == 2
    check_optimizer_restored(fresh, {"step": 5, "optimizer_state_entries": 2})


@pytest.mark.parametrize("stale, code", [("", 0), ("1", 1)])
def test_every_rank_stops_when_one_rank_lost_its_optimizer(tmp_path, stale, code):
    proc = run(torchrun("--standalone", "--nproc_per_node=2", str(WORKER), str(tmp_path / "ckpt"), stale),
               cwd=tmp_path, timeout=180)
    output = proc.stdout + proc.stderr
    if not stale:
        assert proc.returncode == 0, output
        assert "rank 0: 2 entries restored" in output and "rank 1: 2 entries restored" in output
        return
    assert "rank 1: 0 entries restored" in output and "rank 0: 2 entries restored" in output  # DCP's silent skip
    for rank in (0, 1):  # both ranks refuse (one collective), nobody trains on or hangs
        assert f"rank {rank}: error: resume from" in output and "optimizer state was not restored" in output
    assert proc.returncode != 0
