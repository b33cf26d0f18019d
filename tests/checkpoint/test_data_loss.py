"""Never lose a good checkpoint: retention, prune, lineages, every-checkpoint-corrupt, corrupt .metadata and a full
disk, with real `train.py` processes and the real `ddlc checkpoints` CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ddlc.checkpoint import CheckpointStore, catalog
from ddlc.checkpoint.errors import CHECKPOINT_IO_EXIT_CODE
from ddlc.checkpoint.manifest import COMMIT, verify
from tests.support import CONFIG, FAST, PYTHON, TRAIN_PY, assert_ok, child_env, run

DDLC = str(Path(PYTHON).parent / "ddlc")


def _job(run_dir: Path, *extra: str) -> list[str]:
    return [PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *FAST, f"monitoring.run_dir={run_dir}",
            "monitoring.run_name=r", *extra]


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0xFF
    path.write_bytes(bytes(data))


def _steps(ck: Path) -> list[str]:
    return sorted(p.name for p in ck.glob("step-*"))


def _no_traceback(proc) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One single-process run to step 30, checkpoints at 10, 20, 30 (copied by each test)."""
    root = tmp_path_factory.mktemp("trained")
    assert_ok(run(_job(root, "training.max_steps=30", "checkpoint.interval_steps=10", "checkpoint.keep_last=5"),
                  cwd=root))
    assert _steps(root / "r" / "checkpoints") == ["step-00000010", "step-00000020", "step-00000030"]
    return root


def _copy(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(trained / "r", tmp_path / "r")
    return tmp_path, tmp_path / "r" / "checkpoints"


def test_keep_last_1_after_resuming_past_a_corrupt_newest_keeps_the_new_checkpoints(trained, tmp_path):
    """#12 items 1 and 8: the newest (step 30) has a corrupt .metadata; resume with keep_last=1 and another
    interval loads step 20 without unpickling the bad file, and each new checkpoint survives its own commit."""
    run_dir, ck = _copy(trained, tmp_path)
    _flip(ck / "step-00000030" / ".metadata")
    proc = run(_job(run_dir, "training.max_steps=29", "checkpoint.interval_steps=4", "checkpoint.keep_last=1"),
               cwd=run_dir)
    assert_ok(proc)
    _no_traceback(proc)
    assert f"resumed from {ck / 'step-00000020'} at step 20" in proc.stdout
    assert f"skipping checkpoint {ck / 'step-00000030'}: .metadata: sha256 mismatch" in proc.stderr
    # 29 is newest by commit order: it stays; 30 (corrupt, older by commit order), 10, 20, 24, 28 go.
    assert _steps(ck) == ["step-00000029"]
    store = CheckpointStore(str(ck))
    assert catalog.latest_pointer(store) == "step-00000029" and verify(store, "step-00000029").ok


def _store_with(tmp_path: Path, steps: list[int]) -> Path:
    import torch

    from ddlc.checkpoint import Checkpointer

    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    ckpt = Checkpointer(str(tmp_path / "ck"), keep_last=100)
    for step in steps:
        ckpt.save(step, model, optimizer, {"step": step}, blocking=True)
    ckpt.close()
    return tmp_path / "ck"


def test_prune_verifies_before_deleting_and_keeps_keep_last_verified(tmp_path):
    """#12 item 2: prune --keep-last 1 with a corrupt newest keeps the newest good one (and the corrupt one, for a
    person to look at), deletes only older good ones, moves `latest`; --dry-run deletes nothing."""
    ck = _store_with(tmp_path, [10, 20, 30, 40, 50, 60])
    shard = next((ck / "step-00000060").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-9])  # truncated: a size check sees it
    before = {p: p.read_bytes() for p in ck.rglob("*") if p.is_file()}
    assert (ck / "latest").read_text().strip() == "step-00000060"
    dry = run([DDLC, "checkpoints", "prune", str(ck), "--keep-last", "1", "--dry-run"], cwd=tmp_path, COLUMNS="300")
    assert_ok(dry)
    assert len(_steps(ck)) == 6
    # nothing at all changed: not a file, and not `latest` (which the real prune moves off the corrupt newest)
    assert {p: p.read_bytes() for p in ck.rglob("*") if p.is_file()} == before
    for step in (10, 20, 30, 40):
        assert f"would delete {ck / f'step-{step:08d}'}" in dry.stdout
    assert f"would keep {ck / 'step-00000050'}: newest verified" in dry.stdout
    assert f"would keep {ck / 'step-00000060'}: does not verify" in dry.stdout
    proc = run([DDLC, "checkpoints", "prune", str(ck), "--keep-last", "1"], cwd=tmp_path, COLUMNS="300")
    assert_ok(proc)
    assert _steps(ck) == ["step-00000050", "step-00000060"]
    assert (ck / "latest").read_text().strip() == "step-00000050"  # moved off the corrupt one
    # A flipped byte keeps the size: only --verify (SHA-256) sees it. Then nothing verifies: nothing is deleted.
    _flip(next((ck / "step-00000050").glob("*.distcp")))
    proc = run([DDLC, "checkpoints", "prune", str(ck), "--keep-last", "1", "--verify"], cwd=tmp_path, COLUMNS="300")
    assert_ok(proc)
    assert "no checkpoint verifies" in proc.stdout and _steps(ck) == ["step-00000050", "step-00000060"]


def _resume_then_save(ck: Path, keep_last: int, step: int) -> int:
    """A job's life in one process: resume from `ck` (the model of `_store_with`), save `step`, close. Returns the
    step it resumed at."""
    import torch

    from ddlc.checkpoint import Checkpointer

    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    ckpt = Checkpointer(str(ck), keep_last=keep_last)
    resumed = ckpt.resume(model, optimizer)["step"]
    ckpt.save(step, model, optimizer, {"step": step}, blocking=True)
    ckpt.close()
    return resumed


def test_retention_after_resume_never_counts_a_bit_flipped_checkpoint_toward_keep_last(tmp_path):
    """A flipped byte keeps a shard's size. Retention used to count such a checkpoint (not the one resumed from) as
    one of keep_last and delete an older good one in its place, leaving fewer good checkpoints than keep_last."""
    ck = _store_with(tmp_path, [10, 20, 30])
    _flip(next((ck / "step-00000020").glob("*.distcp")))
    assert _resume_then_save(ck, keep_last=3, step=40) == 30
    store = CheckpointStore(str(ck))
    good = [e.name for e in catalog.scan(store, check_hashes=True) if e.state == "verified"]
    assert good == ["step-00000010", "step-00000030", "step-00000040"], _steps(ck)
    assert "step-00000020" not in _steps(ck)  # corrupt and older than the newest good one: deleted


def test_a_rerun_step_saved_over_one_found_corrupt_at_resume_counts_as_the_new_good_checkpoint(tmp_path):
    """Resume skips a corrupt step 30 and loads 20; the job then saves step 30 again. That new checkpoint is good:
    `latest` must name it and retention must count it (it used to stay 'corrupt' for the rest of the job)."""
    ck = _store_with(tmp_path, [10, 20, 30])
    _flip(next((ck / "step-00000030").glob("*.distcp")))
    assert _resume_then_save(ck, keep_last=2, step=30) == 20
    store = CheckpointStore(str(ck))
    assert catalog.latest_pointer(store) == "step-00000030"
    assert _steps(ck) == ["step-00000020", "step-00000030"] and verify(store, "step-00000030").ok


def test_fresh_start_never_mixes_with_another_runs_checkpoints(trained, tmp_path):
    """#12 item 3: resume=false where another run's checkpoints are refuses (exit 2, naming the URI); with
    on_existing=move_aside they are moved aside, and the next normal start continues the new run, not the old."""
    run_dir, ck = _copy(trained, tmp_path)
    fresh = ["training.max_steps=20", "checkpoint.interval_steps=10", "checkpoint.resume=false"]
    refused = run(_job(run_dir, *fresh), cwd=run_dir)
    _no_traceback(refused)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert f"checkpoint.uri {ck} already holds 3 committed checkpoint(s)" in refused.stderr
    assert _steps(ck) == ["step-00000010", "step-00000020", "step-00000030"]

    moved = run(_job(run_dir, *fresh, "checkpoint.on_existing=move_aside"), cwd=run_dir)
    assert_ok(moved)
    assert "moved 3 checkpoint director(ies) of the previous run aside" in moved.stderr
    assert _steps(ck) == ["step-00000010", "step-00000020"]
    aside = next(ck.glob("previous-*"))
    assert _steps(aside) == ["step-00000010", "step-00000020", "step-00000030"]

    again = run(_job(run_dir, "training.max_steps=25", "checkpoint.interval_steps=10"), cwd=run_dir)
    assert_ok(again)
    assert f"resumed from {ck / 'step-00000020'} at step 20" in again.stdout
    lineages = {json.loads((d / COMMIT).read_text())["extra"]["lineage"] for d in ck.glob("step-*")}
    assert len(lineages) == 1


def test_every_checkpoint_corrupt_refuses_to_start_over(trained, tmp_path):
    """#12 item 7: no silent restart from step 0; exit 2 with one line, nothing deleted."""
    run_dir, ck = _copy(trained, tmp_path)
    shard = next((ck / "step-00000010").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-3])
    _flip(next((ck / "step-00000020").glob("*.distcp")))
    (ck / "step-00000030" / COMMIT).write_text("[]")
    proc = run(_job(run_dir, "training.max_steps=40", "checkpoint.interval_steps=10"), cwd=run_dir)
    _no_traceback(proc)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"every checkpoint under {ck} is corrupt or unreadable" in errors[0]
    assert "checkpoint.resume=false" in errors[0]
    assert _steps(ck) == ["step-00000010", "step-00000020", "step-00000030"]
    assert not (run_dir / "r" / "metrics.jsonl").read_text().count('"step": 31')


def test_full_disk_final_save_is_one_error_with_its_own_code_and_leaves_no_debris(tmp_path):
    """#12 item 6, on a real 1.6 MB tmpfs (a private mount namespace): a checkpoint is ~1 MB, so the first fits
    and every later one runs out of space. Mid-run failures are warnings; the final one is one error line, exit
    74; the failed saves' partial directories are gone; the first checkpoint still verifies."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private tmpfs")
    disk, after = tmp_path / "disk", tmp_path / "after"
    disk.mkdir()
    cmd = " ".join(f"'{a}'" for a in _job(tmp_path, "training.max_steps=12", "checkpoint.interval_steps=5",
                                           "checkpoint.keep_last=1", f"checkpoint.uri={disk}/ck"))
    script = (f"mount -t tmpfs -o size=1600k tmpfs '{disk}' || exit 99; {cmd}; rc=$?; "
              f"cp -a '{disk}/ck' '{after}'; exit $rc")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    _no_traceback(proc)
    assert proc.returncode == CHECKPOINT_IO_EXIT_CODE, proc.stderr[-3000:]
    assert "step-00000010 failed and was not committed" in proc.stderr and "No space left" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "step-00000012 could not be saved" in errors[0], proc.stderr[-2000:]
    assert "No space left on device" in errors[0] and "step-00000005" in errors[0]
    assert _steps(after) == ["step-00000005"]
    store = CheckpointStore(str(after))
    assert verify(store, "step-00000005").ok and catalog.latest_pointer(store) == "step-00000005"
