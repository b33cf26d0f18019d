"""The four dashboards as data: one definition rendered locally (`ddlc dashboard`), in Grafana and in CloudWatch.

Each panel lists its series once, with one query per place it can be read from:

* `promql`: Prometheus (Grafana and `ddlc dashboard --prometheus URL`). `$__rate_interval` and `$__range` are
  Grafana's variables; the local dashboard substitutes them itself.
* `cloudwatch`: a CloudWatch metric-math expression (SEARCH over the CloudWatch agent's `CWAgent` namespace or
  ddlc's `DDLC` namespace), or `alarm:<field>` to reuse the exact series an alarm watches. `$CLUSTER` is
  replaced by the cluster (stack) name.
* `local`: what the local dashboard computes without Prometheus, from the run store or this machine.

A panel without a query for one place is left out there (listed in docs/dashboards.md), never drawn empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

# The utilization target of the runbook, the same number as the alarm (ddlc.infra.alarms) and the alert rule.
GPU_UTILIZATION_TARGET_PERCENT = 80.0
GPU_MEMORY_HIGH_PERCENT = 95.0
# A GPU below this utilization counts as idle for idle GPU-hours.
IDLE_GPU_UTILIZATION_PERCENT = 5.0

Unit = Literal["percent", "bytes", "bytes_per_second", "per_second", "seconds", "usd", "tokens_per_second",
               "celsius", "watts", "hours", "count", "none"]
PanelKind = Literal["timeseries", "stat", "bar"]
LocalSourceKind = Literal["run", "cost", "host"]


@dataclass(frozen=True)
class LocalSource:
    """What the local dashboard reads without Prometheus.

    run:  a field of metrics.jsonl (`key` = loss, tokens_per_s, ...), one series per run.
    cost: a cost figure of ddlc.dashboards.cost (`key` = usd_total, usd_per_1m_tokens, ...).
    host: a metric of this machine sampled by the dashboard with the node agent's own collectors (`key` = a
          Prometheus name such as ddlc_gpu_utilization_ratio); `rate` for counters, one series per `by` label,
          `divide_by` another metric with the same labels, times `scale`.
    """

    kind: LocalSourceKind
    key: str
    rate: bool = False
    by: Optional[str] = None
    divide_by: Optional[str] = None
    scale: float = 1.0
    combine: Literal["avg", "sum"] = "avg"  # how series sharing a `by` value (or all, without `by`) combine
    hide_devices: Optional[str] = None  # a regex: samples whose `device` label matches it in full are left out
    sparse: bool = False  # run: only the steps that logged `key` (val_loss: evaluated steps), joined by a line


@dataclass(frozen=True)
class Series:
    label: str  # legend; `{{label}}` placeholders name Prometheus labels (Grafana's legendFormat syntax)
    promql: Optional[str] = None
    cloudwatch: Optional[str] = None
    local: Optional[LocalSource] = None


@dataclass(frozen=True)
class Threshold:
    value: float
    label: str
    color: str  # CSS / Grafana color name
    # "below" marks values under the line as bad (utilization target), "above" values over it (memory).
    bad: Literal["below", "above"] = "above"


@dataclass(frozen=True)
class Panel:
    id: str
    title: str
    unit: Unit
    kind: PanelKind = "timeseries"
    description: str = ""
    series: tuple[Series, ...] = ()
    thresholds: tuple[Threshold, ...] = ()
    # Shown locally when no series has data; names the reason (no GPU, no EFA, no run yet).
    empty_message: str = "No data yet."
    width: int = 12  # of 24 grid columns (Grafana and CloudWatch), a half row by default

    def has(self, source: Literal["promql", "cloudwatch", "local"]) -> bool:
        return any(getattr(series, source) is not None for series in self.series)


@dataclass(frozen=True)
class Dashboard:
    slug: str  # Grafana uid, CloudWatch dashboard name suffix, local tab id
    title: str
    description: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)

    def panel(self, panel_id: str) -> Panel:
        for panel in self.panels:
            if panel.id == panel_id:
                return panel
        raise KeyError(panel_id)


# Said when no URL was given; with one, the local page replaces it with what Prometheus answered
# (ddlc.dashboards.panel_data.empty_message).
NO_PROMETHEUS = ", and no Prometheus URL was given (`ddlc dashboard --prometheus URL`)."
NO_GPU = "No GPU data: this machine has no NVIDIA GPU (NVML not found)" + NO_PROMETHEUS
NO_EFA = "No EFA data: this machine has no EFA device" + NO_PROMETHEUS
NO_RUN = "No training data yet: the run has not logged a step."
NO_SLURM = ("No Slurm data: squeue/sinfo are not installed here or no slurmctld answered (on the cluster the head "
            "node's agent exports them with scheduler=slurm).")

_TARGET = Threshold(GPU_UTILIZATION_TARGET_PERCENT, f"{GPU_UTILIZATION_TARGET_PERCENT:g}% target", "orange", bad="below")
_MEMORY_HIGH = Threshold(GPU_MEMORY_HIGH_PERCENT, f"{GPU_MEMORY_HIGH_PERCENT:g}% (out-of-memory near)", "red")


def _cw_search(namespace_and_dims: str, metric: str, statistic: str = "Average", period: int = 300,
               cluster: bool = False, extra: str = "") -> str:
    """A CloudWatch SEARCH: with `cluster`, any series of the namespace carrying ClusterName=<this cluster>
    (the CloudWatch agent adds more dimensions than we name: GPU index, interface, ...); otherwise an exact
    dimension schema (ddlc's own namespace, where labels become dimensions)."""
    if cluster:
        terms = f'Namespace="{namespace_and_dims}" MetricName="{metric}" ClusterName="$CLUSTER"'
    else:
        terms = f'{{{namespace_and_dims}}} MetricName="{metric}"'
    return f"SEARCH('{terms}{extra}', '{statistic}', {period})"


# CloudWatch agent series, tagged with the cluster (see ddlc.infra.user_data).
_CW_AGENT = "CWAgent"
_CW_AGENT_NET = "CWAgent"
# ddlc's own namespace: labels become dimensions (ddlc.monitor.cloudwatch).
_DDLC_RANK = "DDLC,node,rank,run"
_DDLC_SLURM = "DDLC,node,state"  # the head node's agent (ddlc.monitor.slurm)
_DDLC_COST = "DDLC,instance_type,run"
_DDLC_EFA = "DDLC,device,node,port"  # the node agent's EFA counters, published as per-second rates

_RATE = "[$__rate_interval]"
# Grafana's $node and $run template variables (multi-value, "All" = .*; the local page puts .* in their place).
# Node series filter by node; job-level series by run; per-rank series by both. Rank 0's job-level gauges (loss,
# learning rate, gradient norm) by run only: rank 0 may be on a node not selected.
_NODE_MATCH = 'node=~"$node"'
_RUN_MATCH = 'run=~"$run"'
_NODE = f"{{{_NODE_MATCH}}}"
_RUN = f"{{{_RUN_MATCH}}}"
_RANKS = f"{{{_RUN_MATCH},{_NODE_MATCH}}}"
# Interfaces whose traffic is not the node's own: loopback, traffic shaping (ifb), container veth pairs and bridges.
# The network panels leave them out (PromQL `device!~`, the local page; CloudWatch: `lo`, see docs/dashboards.md).
HIDDEN_INTERFACES = r"lo|ifb.*|veth.*|docker.*|br-.*|virbr.*"
_SHOWN = f'{{device!~"{HIDDEN_INTERFACES}",{_NODE_MATCH}}}'
_CW_SHOWN = ' NOT interface="lo"'  # CloudWatch search terms match whole tokens, not patterns
# Stat and bar panels read the last value in the dashboard's range: a finished run's series are stale minutes after
# its end, and an instant query would drop it.
_LAST = "[$__range]"

GPU_CLUSTER_HEALTH = Dashboard(
    slug="gpu-cluster-health",
    title="GPU cluster health",
    description="GPU utilization against the 80% target, GPU memory, temperature, power and errors, host CPU and memory, "
                "Slurm jobs and nodes.",
    panels=(
        Panel(
            "gpu-utilization", "GPU utilization", "percent",
            description="Per GPU. Below the 80% target for 30 minutes raises DDLCGpuUnderutilized.",
            series=(Series(
                "{{node}} GPU {{gpu}}", promql=f"100 * ddlc_gpu_utilization_ratio{_NODE}",
                cloudwatch=_cw_search(_CW_AGENT, "nvidia_smi_utilization_gpu", cluster=True),
                local=LocalSource("host", "ddlc_gpu_utilization_ratio", by="gpu", scale=100.0),
            ),),
            thresholds=(_TARGET,), empty_message=NO_GPU,
        ),
        Panel(
            "gpu-utilization-mean", "Mean GPU utilization", "percent", kind="stat",
            description="Average over every GPU of the cluster; the alarm's series in CloudWatch.",
            series=(Series(
                "mean", promql=f"100 * avg(ddlc_gpu_utilization_ratio{_NODE})", cloudwatch="alarm:gpu_utilization",
                local=LocalSource("host", "ddlc_gpu_utilization_ratio", scale=100.0),
            ),),
            thresholds=(_TARGET,), empty_message=NO_GPU, width=6,
        ),
        Panel(
            "gpu-memory", "GPU memory used", "percent",
            series=(Series(
                "{{node}} GPU {{gpu}}", promql=f"100 * ddlc_gpu_memory_used_bytes{_NODE} / ddlc_gpu_memory_total_bytes{_NODE}",
                cloudwatch="alarm:gpu_memory_percent",
                local=LocalSource("host", "ddlc_gpu_memory_used_bytes", by="gpu",
                                  divide_by="ddlc_gpu_memory_total_bytes", scale=100.0),
            ),),
            thresholds=(_MEMORY_HIGH,), empty_message=NO_GPU, width=6,
        ),
        Panel(
            "gpu-temperature", "GPU temperature", "celsius",
            series=(Series(
                "{{node}} GPU {{gpu}}", promql=f"ddlc_gpu_temperature_celsius{_NODE}",
                cloudwatch=_cw_search(_CW_AGENT, "nvidia_smi_temperature_gpu", cluster=True),
                local=LocalSource("host", "ddlc_gpu_temperature_celsius", by="gpu"),
            ),),
            empty_message=NO_GPU, width=6,
        ),
        Panel(
            "gpu-power", "GPU power", "watts",
            series=(Series(
                "{{node}} GPU {{gpu}}", promql=f"ddlc_gpu_power_watts{_NODE}",
                cloudwatch=_cw_search(_CW_AGENT, "nvidia_smi_power_draw", cluster=True),
                local=LocalSource("host", "ddlc_gpu_power_watts", by="gpu"),
            ),),
            empty_message=NO_GPU, width=6,
        ),
        Panel(
            "gpu-errors", "GPU hardware errors", "count", kind="stat",
            description="Xid and uncorrected ECC errors (Prometheus: in the last hour; locally: since the agent started).",
            series=(Series(
                "Xid + uncorrected ECC",
                # Each side `or vector(0)`: a node without ECC reporting (or without Xid events) still shows 0.
                promql=f"(sum(increase(ddlc_gpu_xid_errors_total{_NODE}[1h])) or vector(0))"
                       f' + (sum(increase(ddlc_gpu_ecc_errors_total{{type="uncorrected",{_NODE_MATCH}}}[1h])) or vector(0))',
                local=LocalSource("host", "ddlc_gpu_xid_errors_total", combine="sum"),
            ),),
            empty_message=NO_GPU, width=6,
        ),
        Panel(
            "cpu-utilization", "Host CPU utilization", "percent",
            series=(Series(
                "{{node}}", promql=f"100 * ddlc_cpu_utilization_ratio{_NODE}",
                cloudwatch=_cw_search(_CW_AGENT, "cpu_usage_active", cluster=True),
                local=LocalSource("host", "ddlc_cpu_utilization_ratio", by="node", scale=100.0),
            ),),
        ),
        Panel(
            "host-memory", "Host memory used", "percent",
            series=(Series(
                "{{node}}", promql=f"100 * ddlc_memory_used_bytes{_NODE} / ddlc_memory_total_bytes{_NODE}",
                cloudwatch=_cw_search(_CW_AGENT, "mem_used_percent", cluster=True),
                local=LocalSource("host", "ddlc_memory_used_bytes", by="node",
                                  divide_by="ddlc_memory_total_bytes", scale=100.0),
            ),),
        ),
        Panel(
            "slurm-jobs", "Slurm jobs", "count",
            description="Jobs by state from squeue (array tasks one by one); pending is the queue length "
                        "(ddlc_slurm_queue_length).",
            series=(Series(
                "{{state}}", promql="ddlc_slurm_jobs",
                cloudwatch=_cw_search(_DDLC_SLURM, "ddlc_slurm_jobs", "Maximum", 60),
                local=LocalSource("host", "ddlc_slurm_jobs", by="state", combine="sum"),
            ),),
            empty_message=NO_SLURM,
        ),
        Panel(
            "slurm-nodes", "Slurm nodes", "count",
            description="Compute nodes by state from sinfo. Drained or draining: taken out of service by a failed "
                        "`ddlc health` (HealthCheckProgram) or an operator; down: slurmd not answering.",
            series=(Series(
                "{{state}}", promql="ddlc_slurm_nodes",
                cloudwatch=_cw_search(_DDLC_SLURM, "ddlc_slurm_nodes", "Maximum", 60),
                local=LocalSource("host", "ddlc_slurm_nodes", by="state", combine="sum"),
            ),),
            empty_message=NO_SLURM,
        ),
    ),
)

TRAINING_PROGRESS = Dashboard(
    slug="training-progress",
    title="Training progress",
    description="Loss, throughput, step time, learning rate and gradient norm of each run.",
    panels=(
        Panel(
            "loss", "Training loss", "none",
            series=(Series(
                "{{run}}", promql=f'ddlc_train_loss{{rank="0",{_RUN_MATCH}}}',
                cloudwatch=_cw_search(_DDLC_RANK, "ddlc_train_loss"),
                local=LocalSource("run", "loss"),
            ), Series(
                # Held-out data (data.val_fraction > 0), on evaluated steps (training.eval_interval); no series
                # without a validation split.
                "{{run}} validation", promql=f'ddlc_train_val_loss{{rank="0",{_RUN_MATCH}}}',
                cloudwatch=_cw_search(_DDLC_RANK, "ddlc_train_val_loss"),
                local=LocalSource("run", "val_loss", sparse=True),
            )),
            empty_message=NO_RUN,
        ),
        Panel(
            "throughput", "Throughput", "tokens_per_second",
            description="Tokens per second of the whole job (sum over ranks), from the token counters: every step "
                        "counts, not only the last one before a scrape.",
            series=(Series(
                "{{run}}", promql=f"sum by (run) (rate(ddlc_train_tokens_total{_RANKS}{_RATE}))",
                cloudwatch=f"SUM({_cw_search(_DDLC_RANK, 'ddlc_train_tokens_per_second')})",
                local=LocalSource("run", "tokens_per_s"),
            ),),
            empty_message=NO_RUN,
        ),
        Panel(
            "step-time", "Step time", "seconds",
            description="Per rank. The gradient all-reduce makes every rank's step about as long as the slowest "
                        "one's; the compute time up to the all-reduce (Prometheus, DDP) singles out a straggler "
                        "(DDLCStragglerRank).",
            series=(
                Series(
                    "{{run}} rank {{rank}}", promql=f"ddlc_train_step_seconds{_RANKS}",
                    cloudwatch=_cw_search(_DDLC_RANK, "ddlc_train_step_seconds"),
                    local=LocalSource("run", "step_time_s"),
                ),
                Series(
                    "{{run}} rank {{rank}} compute",
                    promql=f"rate(ddlc_train_compute_seconds_total{_RANKS}{_RATE}) / rate(ddlc_train_compute_steps_total{_RANKS}{_RATE})",
                ),
            ),
            empty_message=NO_RUN,
        ),
        Panel(
            "learning-rate", "Learning rate", "none", width=6,
            series=(Series(
                "{{run}}", promql=f'ddlc_train_learning_rate{{rank="0",{_RUN_MATCH}}}',
                cloudwatch=_cw_search(_DDLC_RANK, "ddlc_train_learning_rate"),
                local=LocalSource("run", "lr"),
            ),),
            empty_message=NO_RUN,
        ),
        Panel(
            "grad-norm", "Gradient norm", "none", width=6,
            series=(Series(
                "{{run}}", promql=f'ddlc_train_grad_norm{{rank="0",{_RUN_MATCH}}}',
                cloudwatch=_cw_search(_DDLC_RANK, "ddlc_train_grad_norm"),
                local=LocalSource("run", "grad_norm"),
            ),),
            empty_message=NO_RUN,
        ),
        Panel(
            "step", "Step", "count", kind="stat", width=6,
            series=(Series(
                "{{run}}", promql=f"max by (run) (last_over_time(ddlc_train_step{_RANKS}{_LAST}))",
                cloudwatch=f"MAX({_cw_search(_DDLC_RANK, 'ddlc_train_step', 'Maximum')})",
                local=LocalSource("run", "step"),
            ),),
            empty_message=NO_RUN,
        ),
        Panel(
            "tokens-seen", "Tokens seen", "count", kind="stat", width=6,
            series=(Series(
                # Across resumes (the per-rank counters restart with each attempt).
                "{{run}}", promql=f"max by (run) (last_over_time(ddlc_train_tokens_seen{_RUN}{_LAST}))",
                local=LocalSource("run", "tokens_seen"),
            ),),
            empty_message=NO_RUN,
        ),
        Panel(
            "data-wait", "Data-loader wait per step", "seconds",
            description="Per rank: time spent fetching the step's batches (ddlc.runtime.step_stats). A rank that "
                        "waits for data while the others compute slows every step (locally: rank 0).",
            series=(Series(
                "{{run}} rank {{rank}}",
                promql=f"rate(ddlc_train_data_wait_seconds_total{_RANKS}{_RATE}) "
                       f"/ rate(ddlc_train_steps_total{_RANKS}{_RATE})",
                local=LocalSource("run", "data_wait_s"),
            ),),
            empty_message="No data-loader wait: the run has not logged a step, or it was written by a ddlc (or a "
                          "loop of your own) that does not record `data_wait_s`.",
        ),
        Panel(
            "peak-memory", "Peak memory per rank", "bytes",
            description="GPU: the most PyTorch's allocator held on the rank's device; host: the rank process' peak "
                        "resident memory (locally: rank 0, the GPU peak on CUDA, else the host peak).",
            series=(
                Series("{{run}} rank {{rank}} GPU", promql=f"ddlc_train_gpu_memory_peak_bytes{_RANKS}"),
                Series("{{run}} rank {{rank}} host", promql=f"ddlc_train_host_memory_peak_bytes{_RANKS}"),
                Series("{{run}} rank {{rank}} peak", local=LocalSource("run", "peak_memory_bytes")),
            ),
            empty_message="No peak memory: the run has not logged a step, or it was written by a ddlc (or a loop "
                          "of your own) that does not record `peak_memory_bytes`.",
        ),
    ),
)

NETWORK_PERFORMANCE = Dashboard(
    slug="network-performance",
    title="Network performance",
    description="Per-interface traffic, packets and errors (virtual interfaces left out), and EFA traffic (RDMA, tx, "
                "rx) of each node.",
    panels=(
        Panel(
            "network-receive", "Network receive", "bytes_per_second",
            series=(Series(
                "{{node}} {{device}}", promql=f"rate(ddlc_network_receive_bytes_total{_SHOWN}{_RATE})",
                # The agent's net plugin reports bytes per collection interval: Sum per 300 s window / 300.
                cloudwatch=f"{_cw_search(_CW_AGENT_NET, 'net_bytes_recv', 'Sum', cluster=True, extra=_CW_SHOWN)} / 300",
                local=LocalSource("host", "ddlc_network_receive_bytes_total", rate=True, by="device", combine="sum",
                                  hide_devices=HIDDEN_INTERFACES),
            ),),
        ),
        Panel(
            "network-transmit", "Network transmit", "bytes_per_second",
            series=(Series(
                "{{node}} {{device}}", promql=f"rate(ddlc_network_transmit_bytes_total{_SHOWN}{_RATE})",
                cloudwatch=f"{_cw_search(_CW_AGENT_NET, 'net_bytes_sent', 'Sum', cluster=True, extra=_CW_SHOWN)} / 300",
                local=LocalSource("host", "ddlc_network_transmit_bytes_total", rate=True, by="device", combine="sum",
                                  hide_devices=HIDDEN_INTERFACES),
            ),),
        ),
        Panel(
            "network-packets", "Packets received", "per_second",
            series=(Series(
                "{{node}} {{device}}", promql=f"rate(ddlc_network_receive_packets_total{_SHOWN}{_RATE})",
                cloudwatch=f"{_cw_search(_CW_AGENT_NET, 'net_packets_recv', 'Sum', cluster=True, extra=_CW_SHOWN)} / 300",
                local=LocalSource("host", "ddlc_network_receive_packets_total", rate=True, by="device", combine="sum",
                                  hide_devices=HIDDEN_INTERFACES),
            ),),
        ),
        Panel(
            "network-errors", "Network errors", "per_second",
            description="Receive and transmit errors per second; anything above zero deserves a look.",
            series=(
                Series(
                    "{{node}} {{device}} receive", promql=f"rate(ddlc_network_receive_errors_total{_SHOWN}{_RATE})",
                    cloudwatch=f"{_cw_search(_CW_AGENT_NET, 'net_err_in', 'Sum', cluster=True, extra=_CW_SHOWN)} / 300",
                    local=LocalSource("host", "ddlc_network_receive_errors_total", rate=True, by="device", combine="sum",
                                      hide_devices=HIDDEN_INTERFACES),
                ),
                Series(
                    "{{node}} {{device}} transmit", promql=f"rate(ddlc_network_transmit_errors_total{_SHOWN}{_RATE})",
                    cloudwatch=f"{_cw_search(_CW_AGENT_NET, 'net_err_out', 'Sum', cluster=True, extra=_CW_SHOWN)} / 300",
                    local=LocalSource("host", "ddlc_network_transmit_errors_total", rate=True, by="device", combine="sum",
                                      hide_devices=HIDDEN_INTERFACES),
                ),
            ),
        ),
        Panel(
            "efa-rdma", "EFA traffic", "bytes_per_second",
            description="Per EFA device, bytes per second. RDMA: the RDMA reads and writes this node started "
                        "(rdma_read_bytes + rdma_write_bytes, one counter: ddlc_efa_rdma_bytes_total); NCCL on p4d "
                        "moves its data with RDMA read. tx / rx: the port's tx_bytes / rx_bytes.",
            series=tuple(
                Series(
                    f"{{{{node}}}} {{{{device}}}} {legend}", promql=f"sum by (node, device) (rate({metric}{_NODE}{_RATE}))",
                    cloudwatch=_cw_search(_DDLC_EFA, metric),
                    local=LocalSource("host", metric, rate=True, by="device", combine="sum"),
                )
                for legend, metric in (("RDMA", "ddlc_efa_rdma_bytes_total"), ("tx", "ddlc_efa_transmit_bytes_total"),
                                       ("rx", "ddlc_efa_receive_bytes_total"))
            ),
            empty_message=NO_EFA,
        ),
        Panel(
            "efa-drops", "EFA receive drops", "per_second",
            series=(Series(
                "{{node}} {{device}}", promql=f"rate(ddlc_efa_receive_drops_total{_NODE}{_RATE})",
                cloudwatch=_cw_search(_DDLC_EFA, "ddlc_efa_receive_drops_total"),
                local=LocalSource("host", "ddlc_efa_receive_drops_total", rate=True, by="device", combine="sum"),
            ),),
            empty_message=NO_EFA,
        ),
    ),
)

_COST_PER_HOUR = _cw_search(_DDLC_COST, "ddlc_cost_usd_per_hour")
# A node's hourly price (ddlc agent --instance-type) for the minutes no rank reported from it (ddlc.monitor.node_cost).
# A finished run's rank series go stale 5 minutes after its endpoint closed: those minutes count as busy.
IDLE_NODES = (f"max by (node) (ddlc_node_price_usd_per_hour{_NODE}) "
              f"unless on (node) group by (node) (ddlc_train_steps_total)")
IDLE_NODE_COST_PROMQL = (f"sum(sum_over_time(({IDLE_NODES})[$__range:1m])) / 60"
                         f" or 0 * sum(max_over_time(ddlc_node_price_usd_per_hour{_NODE}[$__range]))")
NO_NODE_PRICE = ("No node prices: start the node agents with `ddlc agent --instance-type TYPE` (Prometheus), or "
                 "the dashboard has not sampled this machine yet.")
COST_TRACKING = Dashboard(
    slug="cost-tracking",
    title="Cost tracking",
    description="Cost so far, per step / epoch / 1M tokens, projected cost to finish and idle GPU-hours, "
                "from the price table (ddlc.monitor.pricing).",
    panels=(
        Panel(
            "cost-total", "Cost so far", "usd", kind="stat", width=6,
            description="Hourly price x nodes x wall hours since the run began (earlier attempts of a resumed run "
                        "included, up to the checkpoint it resumed from).",
            series=(Series(
                "{{run}}", promql=f"max by (run) (last_over_time(ddlc_run_cost_usd{_RUN}{_LAST}))",
                # USD/hour gauge integrated over the dashboard's time range (5-minute periods).
                cloudwatch=f"RUNNING_SUM(SUM({_COST_PER_HOUR}) * 300 / 3600)",
                local=LocalSource("cost", "usd_total"),
            ),),
            empty_message=NO_RUN,
        ),
        Panel(
            "cost-projected", "Projected cost to finish", "usd", kind="stat", width=6,
            description="Cost so far + remaining steps x recent seconds per step x hourly price x nodes.",
            series=(Series("{{run}}", local=LocalSource("cost", "projected_usd")),),
            empty_message=NO_RUN,
        ),
        Panel(
            "cost-per-1m-tokens", "Cost per 1M tokens", "usd", kind="stat", width=6,
            series=(Series(
                "{{run}}",
                promql=f"sum by (run) (ddlc_cost_usd_per_hour{_RUN}) / 3600 / sum by (run) (rate(ddlc_train_tokens_total{_RUN}{_RATE})) * 1e6",
                cloudwatch=f"SUM({_COST_PER_HOUR}) / 3600 / SUM({_cw_search(_DDLC_RANK, 'ddlc_train_tokens_per_second')}) * 1000000",
                local=LocalSource("cost", "usd_per_1m_tokens"),
            ),),
            empty_message=NO_RUN,
        ),
        Panel(
            "idle-gpu-hours", "Idle GPU-hours", "hours", kind="stat", width=6,
            description=f"GPU-hours spent below {IDLE_GPU_UTILIZATION_PERCENT:g}% utilization in the time range.",
            series=(Series(
                "idle",
                promql=f"sum(sum_over_time((ddlc_gpu_utilization_ratio{_NODE} < bool {IDLE_GPU_UTILIZATION_PERCENT / 100:g})"
                       "[$__range:1m])) / 60",
                local=LocalSource("cost", "idle_gpu_hours"),
            ),),
            empty_message=NO_GPU,
        ),
        Panel(
            "cost-over-time", "Cost so far over time", "usd",
            series=(Series(
                "{{run}}", promql=f"max by (run) (ddlc_run_cost_usd{_RUN})",
                cloudwatch=f"RUNNING_SUM(SUM({_COST_PER_HOUR}) * 300 / 3600)",
                local=LocalSource("cost", "usd_total"),
            ),),
            empty_message=NO_RUN,
        ),
        Panel(
            "cost-per-step", "Cost per step", "usd",
            series=(Series(
                "{{run}}",
                promql=f"sum by (run) (ddlc_cost_usd_per_hour{_RUN}) / 3600 / max by (run) (rate(ddlc_train_steps_total{_RUN}{_RATE}))",
                local=LocalSource("cost", "usd_per_step"),
            ),),
            empty_message=NO_RUN,
        ),
        Panel(
            "cost-per-epoch", "Cost per epoch", "usd", kind="stat", width=6,
            description="Cost so far / epochs done (the run store knows the epoch; Prometheus does not).",
            series=(Series("{{run}}", local=LocalSource("cost", "usd_per_epoch")),),
            empty_message=NO_RUN,
        ),
        Panel(
            "idle-node-cost", "Idle node cost", "usd", kind="stat", width=6,
            description="What nodes cost while no job ran on them: for each minute a node's agent was up and no "
                        "training rank reported from it, its hourly price / 60 (Prometheus: agents started with "
                        "--instance-type; locally: this machine since the dashboard started, priced as "
                        "--instance-type).",
            series=(Series("idle", promql=IDLE_NODE_COST_PROMQL, local=LocalSource("cost", "idle_usd")),),
            empty_message=NO_NODE_PRICE,
        ),
        Panel(
            "cost-by-run", "Cost by run", "usd", kind="bar", width=6,
            series=(Series(
                "{{run}}", promql=f"max by (run) (last_over_time(ddlc_run_cost_usd{_RUN}{_LAST}))",
                local=LocalSource("cost", "usd_by_run"),
            ),),
            empty_message=NO_RUN,
        ),
        Panel(
            "cost-by-node", "Cost by node", "usd", kind="bar", width=6,
            description="A run's cost split evenly over its nodes, summed per node.",
            series=(Series(
                "{{node}}",
                promql=f"sum by (node) (group by (run, node) (last_over_time(ddlc_train_steps_total{_RANKS}{_LAST})) "
                       f"* on (run) group_left () (max by (run) (last_over_time(ddlc_run_cost_usd{_RUN}{_LAST})) "
                       f"/ max by (run) (last_over_time(ddlc_train_nodes{_RUN}{_LAST}))))",
                local=LocalSource("cost", "usd_by_node"),
            ),),
            empty_message=NO_RUN,
        ),
    ),
)

DASHBOARDS: tuple[Dashboard, ...] = (GPU_CLUSTER_HEALTH, TRAINING_PROGRESS, NETWORK_PERFORMANCE, COST_TRACKING)


def dashboard(slug: str) -> Dashboard:
    for candidate in DASHBOARDS:
        if candidate.slug == slug:
            return candidate
    raise KeyError(slug)


def definition_as_json() -> list[dict]:
    """The definition for the local page's JavaScript (plain dicts)."""
    from dataclasses import asdict

    return [asdict(board) for board in DASHBOARDS]
