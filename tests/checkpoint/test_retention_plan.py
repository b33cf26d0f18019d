"""Each safety rule of retention.plan (its module docstring), on its own, as pure logic: which checkpoints a
commit's retention or `ddlc checkpoints prune` may delete.

Mutants of plan() these tests leave alive, being equivalent: `entry.step < newest.step` -> `<=` for debris (a
directory name is its step, so debris never shares the newest verified step), and the `protect` branch removed or
its `>=` made `>` (a protected entry at least as new as the newest verified one is that one, kept as newest, or a
corrupt one newer than it, kept for inspection: the branch is a second guard, not a rule the others miss)."""

from __future__ import annotations

from ddlc.checkpoint.retention import CORRUPT, UNCOMMITTED, UNREADABLE, VERIFIED, Entry, plan


def _entry(step: int, state: str = VERIFIED, seq: int | None = None, lineage: str | None = None) -> Entry:
    order = None if state in (UNCOMMITTED, UNREADABLE) else (seq if seq is not None else step, 0.0, step)
    return Entry(f"step-{step:08d}", step, state, order=order, lineage=lineage,
                 problem=None if state == VERIFIED else "p")


def _deleted(entries, keep_last, **kwargs) -> list[int]:
    return sorted(d.entry.step for d in plan(entries, keep_last, **kwargs) if d.delete)


def test_newer_is_commit_order_not_the_step():
    """A run that resumed from step 20 (30 was bad at the time) commits 24 after 30: 24 is the newest."""
    entries = [_entry(10, seq=1), _entry(20, seq=2), _entry(30, seq=3), _entry(24, seq=4)]
    assert _deleted(entries, keep_last=1) == [10, 20, 30]
    assert _deleted(entries, keep_last=2) == [10, 20]


def test_a_corrupt_checkpoint_goes_only_when_older_than_the_newest_verified():
    entries = [_entry(10, seq=1), _entry(20, CORRUPT, seq=2), _entry(30, seq=3), _entry(40, CORRUPT, seq=4)]
    decisions = {d.entry.step: d for d in plan(entries, keep_last=5)}
    assert decisions[20].delete and "a newer one does" in decisions[20].why  # can never be loaded
    assert not decisions[40].delete and "kept for inspection" in decisions[40].why  # newer: a person looks at it
    assert not decisions[10].delete and not decisions[30].delete


def test_unreadable_checkpoints_always_stay():
    entries = [_entry(5, UNREADABLE), _entry(10), _entry(20), _entry(30)]
    assert _deleted(entries, keep_last=1) == [10, 20]


def test_nothing_is_deleted_while_no_checkpoint_verifies():
    entries = [_entry(10, CORRUPT), _entry(20, CORRUPT), _entry(5, UNCOMMITTED)]
    assert _deleted(entries, keep_last=1) == []
    assert all("nothing is deleted" in d.why for d in plan(entries, 1) if d.entry.state == CORRUPT)


def test_another_runs_checkpoints_are_never_touched_by_a_jobs_retention():
    entries = [_entry(10, seq=1, lineage="other"), _entry(20, seq=2, lineage="other"),
               _entry(30, seq=3, lineage="mine"), _entry(40, seq=4, lineage="mine"),
               _entry(50, CORRUPT, seq=0, lineage="other")]
    decisions = {d.entry.step: d for d in plan(entries, keep_last=1, own_lineages={"mine", None})}
    assert [s for s, d in sorted(decisions.items()) if d.delete] == [30]
    assert all("another run's checkpoint" in decisions[s].why for s in (10, 20, 50))
    assert _deleted(entries, keep_last=1) == [10, 20, 30, 50]  # prune (no lineage filter) sees them all


def test_uncommitted_directories_go_only_below_the_newest_verified_step():
    entries = [_entry(10, seq=1), _entry(20, seq=2), _entry(15, UNCOMMITTED), _entry(25, UNCOMMITTED)]
    assert _deleted(entries, keep_last=2) == [15]  # 25 may be a save in flight


def test_keep_every_keeps_multiples_only():
    entries = [_entry(s) for s in (10, 20, 30, 40, 50, 60)]
    assert _deleted(entries, keep_last=1, keep_every=20) == [10, 30, 50]


def test_every_decision_and_its_reason_in_the_order_prune_prints_them():
    """`prune` prints each decision with its reason, uncommitted and unreadable directories first (by step), then by commit order."""
    entries = [_entry(60, CORRUPT, seq=6), _entry(50, seq=5), _entry(40, seq=4), _entry(30, seq=3),
               _entry(20, CORRUPT, seq=2), _entry(10, seq=1), _entry(5, seq=0), _entry(7, UNREADABLE),
               _entry(3, UNCOMMITTED), _entry(70, UNCOMMITTED), _entry(80, seq=7, lineage="other")]
    got = [(d.entry.step, d.delete, d.why)
           for d in plan(entries, keep_last=2, keep_every=30, own_lineages={None})]
    assert got == [
        (3, True, "debris of a save that never committed"),
        (7, False, "unreadable, kept for inspection (p)"),
        (70, False, "uncommitted (a save in flight, or newer than any verified)"),
        (5, True, "older than the newest 2 verified"),
        (10, True, "older than the newest 2 verified"),
        (20, True, "does not verify (p); a newer one does"),
        (30, False, "step is a multiple of keep_every=30"),
        (40, False, "within keep_last=2"),
        (50, False, "newest verified"),
        (60, False, "does not verify (p), kept for inspection: newer than the newest verified checkpoint"),
        (80, False, "another run's checkpoint (lineage other)"),
    ]
    nothing = [(d.entry.step, d.delete, d.why) for d in plan([_entry(20, CORRUPT)], keep_last=1)]
    assert nothing == [(20, False, "no checkpoint verifies: nothing is deleted")]


def test_the_checkpoint_resumed_from_stays_until_a_newer_one_verifies():
    entries = [_entry(10, seq=1), _entry(20, seq=2)]
    decisions = {d.entry.step: (d.delete, d.why) for d in plan(entries, keep_last=1, protect=["step-00000020"])}
    assert decisions[20] == (False, "resumed from, and no newer checkpoint has verified yet")
    assert decisions[10] == (True, "older than the newest 1 verified")
    entries.append(_entry(30, seq=3))
    decisions = {d.entry.step: d.delete for d in plan(entries, keep_last=1, protect=["step-00000020"])}
    assert decisions == {10: True, 20: True, 30: False}
