"""Training metrics of one rank, served for Prometheus.

Design
------
Every rank owns one `TrainingMetrics` and, when given a port, serves its own `/metrics` endpoint.
The runtime gives local rank i the port `rank_metrics_port(base_port, local_rank)` = base_port + local_rank,
so a node with 8 ranks serves on base..base+7 and `ddlc monitor prometheus-config` scrapes exactly those.

* Per-rank series (labels run, rank, node): loss, learning rate, grad norm, step time, tokens/s,
  samples/s, step counters. Because every rank reports its own step time, the straggler rule can compare
  each rank with the median over the ranks of a run (`quantile by (run)`).
* Job-level series (label run) are exported by rank 0 only, so summing over ranks never double-counts:
  estimated cost, world size, node count, the checkpoint recovery point objective.
* Checkpoint series carry a `tier` label: storage (the durable checkpoints, what the RPO is about), memory (the
  host-memory tier, rank 0) and peer (a node's snapshot copied to the next node, that node's first rank). They are
  exported by whichever rank calls `observe_checkpoint`; with checkpointing on, rank 0 exports
  `ddlc_checkpoints_total{result,tier}` from 0 for every tier the job runs, so the first failed save is an increase.
* At the end of a run the trainer calls `finish()` (ddlc_train_finished becomes 1, the cost stops) and `close()`
  keeps the endpoint up `linger_s` longer, so Prometheus scrapes the last step before the target goes away: at
  least two scrape intervals (default 35 s for the default 15 s interval; monitoring.metrics_linger_s).

The hot path (`observe_step`) only assigns a few numbers. On log steps the loop calls `publish()`, which
renders this rank's series into a snapshot (bytes, ~0.2 ms per log interval); the endpoint serves that
snapshot plus the one live line that moves with the clock (the cost so far, rank 0), so a scrape never
collects or formats the rank's series and holds the GIL only to copy bytes:

    train loop: observe_step (numbers) ... publish() on log steps -> snapshot bytes
    scrape (server thread): snapshot + live cost line            -> reply

There is one writer (the training thread), so no lock is needed: the snapshot is replaced whole.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ddlc.errors import UserError
from ddlc.monitor.pricing import LOCAL_INSTANCE_TYPE, estimate_cost_usd, hourly_price, load_price_table
from ddlc.monitor.server import MetricsServer

DEFAULT_TRAIN_METRICS_PORT = 9500
DEFAULT_CHECKPOINT_RPO_SECONDS = 3600.0
DEFAULT_LINGER_SECONDS = 35.0  # > two scrape intervals of the generated config's default 15 s
CHECKPOINT_TIERS = ("storage", "memory", "peer")  # values of the checkpoint series' `tier` label


def rank_metrics_port(base_port: int | None, local_rank: int) -> int | None:
    """The port local rank `local_rank` serves on: base + local_rank; 0 stays 0 (ephemeral); None stays None."""
    if base_port is None or base_port == 0:
        return base_port
    port = base_port + local_rank
    if port > 65535:
        raise UserError(f"monitoring.metrics_port {base_port} + local rank {local_rank} is above 65535")
    return port


class _Families:
    """A registry-shaped view of a function yielding metric families (what generate_latest renders)."""

    def __init__(self, families: Callable[[], Iterator[Metric]]) -> None:
        self.collect = families


class TrainingMetrics:
    """Metrics of one training rank. The train loop calls `observe_step` every step and `close()` at the end."""

    def __init__(
        self,
        run: str,
        rank: int,
        world_size: int,
        node: str,
        instance_type: str | None,
        num_nodes: int,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        checkpoint_rpo_seconds: float = DEFAULT_CHECKPOINT_RPO_SECONDS,
        checkpoint_enabled: bool = True,
        checkpoint_tiers: tuple[str, ...] = ("storage",),
        price_table: Path | str | None = None,
        clock: Callable[[], float] = time.time,
        linger_s: float = 0.0,
        log_interval: int = 1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """checkpoint_enabled=False: the job saves no checkpoints (ddlc_checkpoint_enabled 0: no overdue alert)."""
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside world size {world_size}")
        if num_nodes < 1:
            raise UserError(f"num_nodes must be at least 1, got {num_nodes}")
        if not checkpoint_rpo_seconds > 0:
            raise UserError(f"checkpoint recovery point objective must be positive, got {checkpoint_rpo_seconds}")
        if log_interval < 1:
            raise UserError(f"log interval must be at least 1 step, got {log_interval}")
        if not linger_s >= 0:
            raise UserError(f"metrics linger must be zero or more seconds, got {linger_s}")
        self.run, self.rank, self.world_size, self.node = run, rank, world_size, node
        self.instance_type = instance_type or LOCAL_INSTANCE_TYPE
        self.num_nodes = num_nodes
        self.checkpoint_rpo_seconds = float(checkpoint_rpo_seconds)
        self.checkpoint_enabled = bool(checkpoint_enabled)
        unknown = sorted(set(checkpoint_tiers) - set(CHECKPOINT_TIERS))
        if unknown:
            raise UserError(f"checkpoint tiers {unknown} are not among {list(CHECKPOINT_TIERS)}")
        self.checkpoint_tiers = tuple(checkpoint_tiers)  # exported from 0 by rank 0 (with checkpointing on)
        self.linger_s = float(linger_s)
        self.log_interval = int(log_interval)
        self._sleep = sleep
        self.finished_at: float | None = None
        self.hourly_usd = hourly_price(self.instance_type, load_price_table(price_table))
        self._clock = clock
        self.started_at = clock()

        # Written by the training thread only.
        self._step = -1
        self._loss = self._lr = self._grad_norm = math.nan
        self._step_seconds = self._tokens_per_s = self._samples_per_s = math.nan
        self._mfu = math.nan
        self._val_loss: float | None = None  # none until the first evaluation (data.val_fraction > 0)
        self._last_step_at = math.nan
        self._steps_total = 0
        self._tokens_total = 0
        self._samples_total = 0
        self._step_time_total = 0.0
        self._compute_total = 0.0
        self._tokens_seen = -1  # the job's, across resumes; -1: not known yet
        self.prior_cost_usd = 0.0  # cost of the run's earlier attempts, from the checkpoint it resumed from
        self._compute_steps = 0
        self._data_wait_total = 0.0
        self._data_wait_steps = 0
        self._host_peak = self._gpu_peak = -1  # bytes; -1: not measured
        # By tier: saves that succeeded, failed; the last success's time, duration and step.
        self._checkpoints: dict[str, dict] = {}

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._snapshot: bytes | None = None  # the rank's series as of the last publish()
        self._server = MetricsServer(None, host, port, render=self.exposition) if port is not None else None

    @property
    def port(self) -> int | None:
        """The bound port (the real one when constructed with port=0), or None without an HTTP server."""
        return self._server.port if self._server is not None else None

    @property
    def url(self) -> str | None:
        return self._server.url if self._server is not None else None

    # -- called by the train loop -------------------------------------------------------------------------

    def observe_step(
        self, step: int, loss: float, lr: float, grad_norm: float, step_seconds: float, tokens: int, samples: int,
        mfu: float | None = None, compute_seconds: float | None = None, tokens_seen: int | None = None,
        data_wait_seconds: float | None = None, host_memory_peak_bytes: int | None = None,
        gpu_memory_peak_bytes: int | None = None, val_loss: float | None = None,
    ) -> None:
        """Record one finished optimizer step of this rank. `tokens`/`samples` are this rank's, in this step;
        `mfu` is the job's model FLOPs utilization (None: unknown for this GPU); `compute_seconds` this rank's time
        up to the gradient all-reduce (ddlc.runtime.compute_timer; None: not measured); `tokens_seen` the whole job's
        tokens since the run began, across resumes (the trainer state's; rank 0 exports it); `data_wait_seconds`
        this rank's time fetching the step's batches; the peaks this rank's process memory and PyTorch's CUDA
        allocator (ddlc.runtime.step_stats; None: not measured); `val_loss` the job's validation loss when this
        step was evaluated (kept until the next evaluation)."""
        self._step = step
        if tokens_seen is not None:
            self._tokens_seen = tokens_seen
        self._mfu = math.nan if mfu is None else mfu
        self._loss, self._lr, self._grad_norm = loss, lr, grad_norm
        self._step_seconds = step_seconds
        if step_seconds > 0:
            self._tokens_per_s = tokens / step_seconds
            self._samples_per_s = samples / step_seconds
        self._steps_total += 1
        self._tokens_total += tokens
        self._samples_total += samples
        self._step_time_total += step_seconds
        if compute_seconds is not None:
            self._compute_total += compute_seconds
            self._compute_steps += 1
        if data_wait_seconds is not None:
            self._data_wait_total += data_wait_seconds
            self._data_wait_steps += 1
        if host_memory_peak_bytes is not None:
            self._host_peak = max(self._host_peak, host_memory_peak_bytes)
        if gpu_memory_peak_bytes is not None:
            self._gpu_peak = max(self._gpu_peak, gpu_memory_peak_bytes)
        if val_loss is not None:
            self._val_loss = val_loss
        self._last_step_at = self._clock()

    def _tier(self, tier: str) -> dict:
        if tier not in CHECKPOINT_TIERS:
            raise ValueError(f"unknown checkpoint tier {tier!r}")
        return self._checkpoints.setdefault(tier, {"ok": 0, "failed": 0, "at": math.nan, "duration": math.nan,
                                                   "step": -1})

    def observe_checkpoint(self, step: int, duration_s: float, ok: bool, timestamp: float,
                           tier: str = "storage") -> None:
        """Record a checkpoint save of `tier` that finished at `timestamp` (seconds since the epoch)."""
        entry = self._tier(tier)
        if ok:
            entry.update(ok=entry["ok"] + 1, at=timestamp, duration=duration_s, step=step)
        else:
            entry["failed"] += 1
        if self._snapshot is not None:
            self.publish()

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def finish(self, linger: bool = True) -> None:
        """The run ended cleanly (last step trained and saved, or stopped on request): say so and stop the cost.
        linger=False: close() does not wait (a stop request must not be held up; the launcher may kill us)."""
        if self.finished_at is None:
            self.finished_at = self._clock()
        if not linger:
            self.linger_s = 0.0
        self.publish()

    def publish(self) -> None:
        """Render the series observed so far into the snapshot the endpoint serves (the loop calls this on log
        steps; a scrape before the first one renders on the spot)."""
        self._snapshot = generate_latest(_Families(self._snapshot_families))

    def exposition(self) -> bytes:
        """What a scrape gets: the last snapshot and the live cost line."""
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = generate_latest(_Families(self._snapshot_families))
        return snapshot + generate_latest(_Families(self._live_families))

    def close(self) -> None:
        """Stop serving; after `finish()`, only `linger_s` later, so the last values are scraped (twice)."""
        if self._server is not None:
            if self.finished and self.linger_s > 0:
                self._sleep(self.linger_s)
            self._server.close()
            self._server = None

    def __enter__(self) -> "TrainingMetrics":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- read at scrape time ------------------------------------------------------------------------------

    def resumed(self, prior_cost_usd: float | None) -> None:
        """The run continues from a checkpoint that recorded `prior_cost_usd` (the run's cost when it was saved;
        None: an older checkpoint without it)."""
        if prior_cost_usd is not None and math.isfinite(prior_cost_usd) and prior_cost_usd > 0:
            self.prior_cost_usd = float(prior_cost_usd)

    def run_cost_usd(self) -> float:
        """The run's cost across its attempts: what the checkpoint carried + this attempt's cost so far."""
        return self.prior_cost_usd + self.cost_usd()

    def cost_usd(self) -> float:
        until = self.finished_at if self.finished_at is not None else self._clock()
        return estimate_cost_usd(self.hourly_usd, self.num_nodes, until - self.started_at)

    def collect(self) -> Iterator[Metric]:
        yield from self._snapshot_families()
        yield from self._live_families()

    def _live_families(self) -> Iterator[Metric]:
        if self.rank != 0:
            return
        cost = CounterMetricFamily(
            "ddlc_cost_usd", "Estimated cost so far: hourly price x nodes x wall time.", labels=["run", "instance_type"]
        )
        cost.add_metric([self.run, self.instance_type], self.cost_usd())
        run_cost = GaugeMetricFamily(
            "ddlc_run_cost_usd", "Estimated cost of the run since it began, across resumes (carried in the checkpoint).",
            labels=["run", "instance_type"],
        )
        run_cost.add_metric([self.run, self.instance_type], self.run_cost_usd())
        yield from (cost, run_cost)

    def _snapshot_families(self) -> Iterator[Metric]:
        rank_labels = ["run", "rank", "node"]
        ids = [self.run, str(self.rank), self.node]

        def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, help_text, labels=rank_labels)
            family.add_metric(ids, value)
            return family

        def counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, help_text, labels=rank_labels)
            family.add_metric(ids, value)
            return family

        yield gauge("ddlc_train_start_timestamp_seconds", "When this rank's metrics started (job start).", self.started_at)
        yield counter("ddlc_train_steps", "Optimizer steps this rank finished since it started.", self._steps_total)
        yield counter("ddlc_train_tokens", "Tokens this rank processed since it started.", self._tokens_total)
        yield counter("ddlc_train_samples", "Samples this rank processed since it started.", self._samples_total)
        yield counter("ddlc_train_step_time_seconds", "Sum of this rank's step times.", self._step_time_total)
        if self._compute_steps:
            yield counter("ddlc_train_compute_seconds", "Sum of this rank's compute time up to the gradient all-reduce "
                          "(before waiting for other ranks).", self._compute_total)
            yield counter("ddlc_train_compute_steps", "Steps whose compute time was measured.", self._compute_steps)
        if self._data_wait_steps:
            yield counter("ddlc_train_data_wait_seconds", "Sum of this rank's time fetching its batches (rate / "
                          "rate(ddlc_train_steps_total) = wait per step).", self._data_wait_total)
        if self._host_peak >= 0:
            yield gauge("ddlc_train_host_memory_peak_bytes", "Peak resident memory of this rank's process.",
                        self._host_peak)
        if self._gpu_peak >= 0:
            yield gauge("ddlc_train_gpu_memory_peak_bytes", "Most GPU memory PyTorch's allocator held on this "
                        "rank's device.", self._gpu_peak)
        yield gauge("ddlc_train_finished", "1 once the run ended cleanly (finished or stopped on request); a rank "
                    "whose endpoint goes away at 0 crashed.", 1 if self.finished else 0)
        if self._step >= 0:
            yield gauge("ddlc_train_step", "Index of the last finished step (continues across resumes).", self._step)
            yield gauge("ddlc_train_loss", "Training loss of the last step (NaN when it diverged).", self._loss)
            if self._val_loss is not None:
                yield gauge("ddlc_train_val_loss", "Validation loss of the last evaluation (held-out data, mean "
                            "over ranks; data.val_fraction, training.eval_interval).", self._val_loss)
            yield gauge("ddlc_train_learning_rate", "Learning rate of the last step.", self._lr)
            yield gauge("ddlc_train_grad_norm", "Gradient norm of the last step (before clipping).", self._grad_norm)
            yield gauge("ddlc_train_step_seconds", "Duration of this rank's last step.", self._step_seconds)
            yield gauge("ddlc_train_tokens_per_second", "This rank's tokens/s in the last step.", self._tokens_per_s)
            yield gauge("ddlc_train_samples_per_second", "This rank's samples/s in the last step.", self._samples_per_s)
            yield gauge("ddlc_train_mfu_ratio", "Model FLOPs utilization of the job in the last step (0-1; NaN: "
                        "peak unknown for this GPU, see ddlc/runtime/mfu.py).", self._mfu)
            yield gauge("ddlc_train_last_step_timestamp_seconds", "When the last step finished.", self._last_step_at)
            yield gauge("ddlc_train_log_interval_steps", "Steps between two publishes of these series "
                        "(training.log_interval): they move once per log interval.", self.log_interval)

        tiers = [t for t in CHECKPOINT_TIERS if t in self._checkpoints
                 or (self.rank == 0 and self.checkpoint_enabled and t in self.checkpoint_tiers)]
        if tiers:
            results = CounterMetricFamily("ddlc_checkpoints", "Checkpoint saves by result and tier (storage, memory, "
                                          "peer).", labels=rank_labels + ["result", "tier"])
            for tier in tiers:
                entry = self._tier(tier)
                results.add_metric(ids + ["success", tier], entry["ok"])
                results.add_metric(ids + ["failure", tier], entry["failed"])
            yield results
        saved = [tier for tier in tiers if self._checkpoints[tier]["ok"]]
        for name, help_text, key in (
            ("ddlc_checkpoint_last_success_timestamp_seconds", "When the last successful checkpoint of the tier "
             "finished.", "at"),
            ("ddlc_checkpoint_last_duration_seconds", "How long the last successful checkpoint of the tier took.",
             "duration"),
            ("ddlc_checkpoint_last_step", "Step of the last successful checkpoint of the tier.", "step"),
        ):
            if saved:
                family = GaugeMetricFamily(name, help_text, labels=rank_labels + ["tier"])
                for tier in saved:
                    family.add_metric(ids + [tier], self._checkpoints[tier][key])
                yield family

        if self.rank != 0:
            return
        job = GaugeMetricFamily("ddlc_train_world_size", "Ranks in the job.", labels=["run"])
        job.add_metric([self.run], self.world_size)
        nodes = GaugeMetricFamily("ddlc_train_nodes", "Nodes in the job.", labels=["run"])
        nodes.add_metric([self.run], self.num_nodes)
        enabled = GaugeMetricFamily("ddlc_checkpoint_enabled", "1 when the job saves checkpoints (checkpoint.enabled).", labels=["run"])
        enabled.add_metric([self.run], 1 if self.checkpoint_enabled else 0)
        rpo = GaugeMetricFamily("ddlc_checkpoint_rpo_seconds", "Recovery point objective: longest allowed time without a checkpoint.", labels=["run"])
        rpo.add_metric([self.run], self.checkpoint_rpo_seconds)
        price = GaugeMetricFamily("ddlc_cost_usd_per_hour", "Price of the job's instances per hour.", labels=["run", "instance_type"])
        price.add_metric([self.run, self.instance_type], self.hourly_usd * self.num_nodes)
        yield from (job, nodes, enabled, rpo, price)
        if self._tokens_seen >= 0:
            seen = GaugeMetricFamily("ddlc_train_tokens_seen", "Tokens the job trained on since the run began, across "
                                     "resumes (the counters restart with each attempt).", labels=["run"])
            seen.add_metric([self.run], self._tokens_seen)
            yield seen
