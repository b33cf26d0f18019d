"""Training alerts driven by what the ranks export (TrainingMetrics on a fake clock), scrape by scrape, in
`promtool test rules`: overdue checkpoints only for runs that checkpoint, the first failed save, a crashed rank."""

from __future__ import annotations

from pathlib import Path

from ddlc.monitor.alert_rules import rules_text
from ddlc.monitor.training import TrainingMetrics
from tests.monitor.promtool_model import Recording, run_rule_test


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rank(run: str, number: int, clock: Clock, world_size: int = 1, **options) -> TrainingMetrics:
    return TrainingMetrics(run, rank=number, world_size=world_size, node=f"n{number}", instance_type=None,
                           num_nodes=1, clock=clock, **options)


def step(metrics: TrainingMetrics, minute: int) -> None:
    metrics.observe_step(minute, 2.0, 1e-3, 1.0, 1.0, 1000, 1)
    metrics.publish()


def test_checkpoint_overdue_only_for_runs_that_checkpoint(promtool: str, tmp_path: Path) -> None:
    clock = Clock()
    saving = rank("saving", 0, clock, checkpoint_rpo_seconds=1800)  # checkpointing on, never commits
    off = rank("off", 0, clock, checkpoint_rpo_seconds=1800, checkpoint_enabled=False)  # checkpoint.enabled: false
    recording = Recording()
    for minute in range(61):
        clock.now = 60.0 * minute
        for metrics in (saving, off):
            step(metrics, minute)
        recording.scrape(minute, saving, job="ddlc-train", instance="n0:9500")
        recording.scrape(minute, off, job="ddlc-train", instance="n0:9501")
    result = run_rule_test(promtool, tmp_path, rules_text(), recording, alert_tests=[
        {"eval_time": "29m", "alertname": "DDLCCheckpointOverdue", "exp_alerts": []},
        {"eval_time": "45m", "alertname": "DDLCCheckpointOverdue", "exp_alerts": [{
            "exp_labels": {"severity": "critical", "run": "saving"},
            "exp_annotations": {"summary": "run saving: no successful checkpoint within its recovery point objective"},
        }]},
    ])
    assert result.returncode == 0, result.stdout + result.stderr


def test_memory_tier_snapshots_do_not_count_towards_the_rpo(promtool: str, tmp_path: Path) -> None:
    """A job with the memory tier (and its peer copy) snapshotting every minute but no storage checkpoint since
    minute 0 is overdue: host memory does not survive losing the hosts. A failed memory snapshot alerts as such."""
    clock = Clock()
    tiered = rank("tiered", 0, clock, checkpoint_rpo_seconds=1800, checkpoint_tiers=("storage", "memory", "peer"))
    recording = Recording()
    for minute in range(61):
        clock.now = 60.0 * minute
        step(tiered, minute)
        if minute == 0:
            tiered.observe_checkpoint(minute, 5.0, True, clock.now)  # storage
        elif minute == 50:
            tiered.observe_checkpoint(minute, 0.1, False, clock.now, tier="memory")
        else:
            tiered.observe_checkpoint(minute, 0.1, True, clock.now, tier="memory")
            tiered.observe_checkpoint(minute, 0.1, True, clock.now, tier="peer")
        recording.scrape(minute, tiered, job="ddlc-train", instance="n0:9500")
    overdue = {"exp_labels": {"severity": "critical", "run": "tiered"},
               "exp_annotations": {"summary": "run tiered: no successful checkpoint within its recovery point objective"}}
    failed = {"exp_labels": {"severity": "warning", "run": "tiered", "rank": "0", "node": "n0", "result": "failure",
                             "tier": "memory", "job": "ddlc-train", "instance": "n0:9500"},
              "exp_annotations": {"summary": "run tiered: a memory checkpoint save failed in the last 30 minutes"}}
    result = run_rule_test(promtool, tmp_path, rules_text(), recording, alert_tests=[
        {"eval_time": "29m", "alertname": "DDLCCheckpointOverdue", "exp_alerts": []},
        {"eval_time": "45m", "alertname": "DDLCCheckpointOverdue", "exp_alerts": [overdue]},
        {"eval_time": "45m", "alertname": "DDLCCheckpointFailed", "exp_alerts": []},
        {"eval_time": "55m", "alertname": "DDLCCheckpointFailed", "exp_alerts": [failed]},
    ])
    assert result.returncode == 0, result.stdout + result.stderr


def test_first_failed_checkpoint_alerts(promtool: str, tmp_path: Path) -> None:
    clock = Clock()
    metrics = rank("flaky", 0, clock)
    recording = Recording()
    for minute in range(61):
        clock.now = 60.0 * minute
        step(metrics, minute)
        if minute == 10:  # the run's first save fails
            metrics.observe_checkpoint(minute, 5.0, False, clock.now)
        if minute == 20:
            metrics.observe_checkpoint(minute, 5.0, True, clock.now)
        recording.scrape(minute, metrics, job="ddlc-train", instance="n0:9500")
    fired = {"severity": "warning", "run": "flaky", "rank": "0", "node": "n0", "result": "failure",
             "tier": "storage", "job": "ddlc-train", "instance": "n0:9500"}
    result = run_rule_test(promtool, tmp_path, rules_text(), recording, alert_tests=[
        {"eval_time": "9m", "alertname": "DDLCCheckpointFailed", "exp_alerts": []},
        {"eval_time": "12m", "alertname": "DDLCCheckpointFailed", "exp_alerts": [{
            "exp_labels": fired,
            "exp_annotations": {"summary": "run flaky: a storage checkpoint save failed in the last 30 minutes"}}]},
        {"eval_time": "50m", "alertname": "DDLCCheckpointFailed", "exp_alerts": []},
    ])
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_crashed_rank_alerts_and_a_finished_one_does_not(promtool: str, tmp_path: Path) -> None:
    clock = Clock()
    crashed = [rank("crashed", r, clock, world_size=2) for r in range(2)]
    done = rank("done", 0, clock)
    recording = Recording()
    for minute in range(31):
        clock.now = 60.0 * minute
        # Every run trains until minute 10. "crashed" loses rank 1 at minute 8 (rank 0 trains on, then hangs
        # and is killed at minute 10); "done" finishes at minute 10 and its endpoint lingers one more scrape.
        targets = {"crashed-0": (crashed[0], minute <= 10), "crashed-1": (crashed[1], minute <= 7),
                   "done-0": (done, minute <= 11)}
        if minute <= 10:
            for metrics in (*crashed, done):
                step(metrics, minute)
        if minute == 10:
            done.finish()
        for instance, (metrics, serving) in targets.items():
            if serving:
                recording.scrape(minute, metrics, job="ddlc-train", instance=instance)
            recording.add(minute, "up", 1 if serving else 0, job="ddlc-train", instance=instance)
        recording.add(minute, "up", 0, job="ddlc-train", instance="idle-0")  # a port no job has used
    def alert(rank_number: int) -> dict:
        return {"exp_labels": {"severity": "critical", "run": "crashed", "rank": str(rank_number),
                               "node": f"n{rank_number}", "instance": f"crashed-{rank_number}"},
                "exp_annotations": {"summary": f"run crashed rank {rank_number} on n{rank_number} stopped answering "
                                               "without finishing"}}
    result = run_rule_test(promtool, tmp_path, rules_text(), recording, alert_tests=[
        {"eval_time": "7m", "alertname": "DDLCTrainingRankDown", "exp_alerts": []},
        {"eval_time": "8m", "alertname": "DDLCTrainingRankDown", "exp_alerts": []},  # `for: 1m`
        {"eval_time": "10m", "alertname": "DDLCTrainingRankDown", "exp_alerts": [alert(1)]},
        {"eval_time": "14m", "alertname": "DDLCTrainingRankDown", "exp_alerts": [alert(0), alert(1)]},
        {"eval_time": "30m", "alertname": "DDLCTrainingRankDown", "exp_alerts": []},  # 15 minutes on: resolved
    ])
    assert result.returncode == 0, result.stdout + result.stderr


def test_training_stalled_respects_the_log_interval(promtool: str, tmp_path: Path) -> None:
    # "slow": 60 s steps logged every 20 steps, so its series move every 20 minutes; healthy all along.
    # "fast": 1 s steps logged every 10 steps (every 10 s; the recording keeps one scrape a minute), until it
    # hangs after minute 30. "slow-hung": like "slow", hangs after minute 40 (3 log intervals = 60 minutes).
    clock = Clock()
    slow = rank("slow", 0, clock, log_interval=20)
    fast = rank("fast", 0, clock, log_interval=10)
    slow_hung = rank("slow-hung", 0, clock, log_interval=20)
    recording = Recording()
    steps = {"slow": 0, "fast": 0, "slow-hung": 0}
    for minute in range(131):
        clock.now = 60.0 * minute
        for name, metrics, interval, seconds, until in (
            ("slow", slow, 20, 60.0, 999), ("slow-hung", slow_hung, 20, 60.0, 40), ("fast", fast, 10, 1.0, 30),
        ):
            if minute == 0 or minute > until:
                continue
            logs = 60 // (interval * seconds) if seconds < 60 else (1 if minute % interval == 0 else 0)
            for _ in range(int(logs)):
                for _ in range(interval):
                    steps[name] += 1
                    metrics.observe_step(steps[name], 2.0, 1e-3, 1.0, seconds, 1000, 1)
                metrics.publish()
        for instance, metrics in (("n0:9500", slow), ("n0:9501", fast), ("n0:9502", slow_hung)):
            recording.scrape(minute, metrics, job="ddlc-train", instance=instance)

    def fired(run: str, instance: str) -> dict:
        return {"exp_labels": {"severity": "critical", "run": run, "rank": "0", "node": "n0", "job": "ddlc-train",
                               "instance": instance},
                "exp_annotations": {"summary": f"run {run} rank 0 finished no step for 3 log intervals (at least "
                                               "20 minutes)"}}
    result = run_rule_test(promtool, tmp_path, rules_text(), recording, alert_tests=[
        {"eval_time": "45m", "alertname": "DDLCTrainingStalled", "exp_alerts": []},  # fast: 15 min quiet, pending
        {"eval_time": "51m", "alertname": "DDLCTrainingStalled", "exp_alerts": [fired("fast", "n0:9501")]},
        {"eval_time": "100m", "alertname": "DDLCTrainingStalled", "exp_alerts": [fired("fast", "n0:9501")]},
        {"eval_time": "106m", "alertname": "DDLCTrainingStalled",
         "exp_alerts": [fired("fast", "n0:9501"), fired("slow-hung", "n0:9502")]},
    ])
    assert result.returncode == 0, result.stdout + result.stderr
