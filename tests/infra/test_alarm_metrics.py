"""Every alarm watches a series that something in this project publishes, with the same name and dimensions.

Both sides are read, not restated: the alarms from the synthesized template; the publishers from the CloudWatch
agent configuration rendered into the nodes' user data (its metrics, its Prometheus scrape of the training ranks
and the metric names those ranks really export), the template's log metric filters (and the log lines they must
match), and the AWS metrics of the template's own instances and Auto Scaling group.
"""

from __future__ import annotations

import re

import pytest

from tests.infra.conftest import resources, synth

# CloudWatch agent plugin -> metric name prefix (the agent names metrics <prefix>_<measurement>).
_AGENT_PREFIX = {"nvidia_gpu": "nvidia_smi", "mem": "mem", "disk": "disk", "cpu": "cpu", "net": "net"}


def agent_metrics(config: dict) -> set[tuple[str, str, frozenset]]:
    """(namespace, metric, dimension names) of the per-cluster roll-ups the CloudWatch agent publishes."""
    metrics = config["metrics"]
    published = set()
    for plugin, spec in metrics["metrics_collected"].items():
        prefix = _AGENT_PREFIX[plugin]
        plugin_dims = set(spec.get("append_dimensions", {}))
        for measurement in spec["measurement"]:
            name = measurement if measurement.startswith(prefix + "_") else f"{prefix}_{measurement}"
            for rollup in metrics.get("aggregation_dimensions", []):
                if set(rollup) <= plugin_dims | set(metrics.get("append_dimensions", {})):
                    published.add((metrics["namespace"], name, frozenset(rollup)))
    return published


def exported_by_training_ranks() -> dict[str, list[dict]]:
    """Samples a training rank's Prometheus endpoint serves after a checkpoint of each tier (ddlc.monitor.training):
    name -> the label sets it is served with."""
    from ddlc.monitor.training import CHECKPOINT_TIERS, TrainingMetrics

    metrics = TrainingMetrics("run", 0, 1, "node", None, 1, port=None)
    metrics.observe_step(1, 1.0, 1e-3, 1.0, 0.1, 100, 4)
    for tier in CHECKPOINT_TIERS:
        metrics.observe_checkpoint(1, 0.5, True, 1.7e9, tier=tier)
    exported: dict[str, list[dict]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            exported.setdefault(sample.name, []).append(dict(sample.labels))
    return exported


def scraped_metrics(config: dict, scrape_yaml: str) -> set[tuple[str, str, frozenset]]:
    """What the agent's EMF processor publishes from the ranks: declared metrics the ranks export, carrying the
    declared dimensions as labels of the scrape job the declaration selects."""
    import yaml

    prometheus = config["logs"].get("metrics_collected", {}).get("prometheus")
    if not prometheus:
        return set()
    jobs = {job["job_name"]: job for job in yaml.safe_load(scrape_yaml)["scrape_configs"]}
    exported = exported_by_training_ranks()
    published = set()
    emf = prometheus["emf_processor"]
    for declaration in emf["metric_declaration"]:
        assert declaration["source_labels"][0] == "job"
        for job_name, job in jobs.items():
            labels = set().union(*(static.get("labels", {}) for static in job["static_configs"]))
            for metric, label_sets in exported.items():
                if not any(re.fullmatch(selector, metric) for selector in declaration["metric_selectors"]):
                    continue
                for metric_labels in label_sets:
                    # The agent joins the source labels' values with ";" and matches the result.
                    values = {**metric_labels, "job": job_name}
                    joined = ";".join(values.get(label, "") for label in declaration["source_labels"])
                    if not re.fullmatch(declaration["label_matcher"], joined):
                        continue
                    for dims in declaration["dimensions"]:
                        assert set(dims) <= labels | set(metric_labels), \
                            f"{metric}: dimension {dims} is neither a label of job {job_name} nor of the metric"
                        published.add((emf["metric_namespace"], metric, frozenset(dims)))
    return published


def test_the_checkpoint_stale_alarm_sees_storage_checkpoints_only():
    """The memory tier's snapshots land every few steps: published to the alarm's metric, they would hide a
    stalled storage checkpoint (the RPO is about storage)."""
    from ddlc.infra.user_data import CLUSTER_DIMENSION, SCRAPE_JOB, SCRAPED_TRAINING_METRICS, NodeBootConfig, \
        cloudwatch_agent_config

    boot = NodeBootConfig(cluster_name="c", environment="dev", role="worker", region="us-east-1", bucket_name="b",
                          node_count=2, gpus_per_node=8, node_log_group="g", has_gpu=True, package_parameter="p",
                          ssh_secret_id="s", cluster_cidr="10.0.0.0/16", worker_group_name="w")
    emf = cloudwatch_agent_config(boot)["logs"]["metrics_collected"]["prometheus"]["emf_processor"]
    [declaration] = [d for d in emf["metric_declaration"] if d["dimensions"] == [[CLUSTER_DIMENSION]]]
    assert declaration["metric_selectors"] == [f"^{name}$" for name in SCRAPED_TRAINING_METRICS]
    tiers = {t for t in ("storage", "memory", "peer")
             if re.fullmatch(declaration["label_matcher"], ";".join([SCRAPE_JOB, t]))}
    assert tiers == {"storage"}


def aws_published(template_json: dict) -> set[tuple[str, str, frozenset, str]]:
    """AWS/EC2 per instance and per Auto Scaling group (instances with detailed monitoring), AWS/AutoScaling group
    metrics the group enables in MetricsCollection. The dimension value is kept: it must be this stack's."""
    published = set()
    for instance_id in resources(template_json, "AWS::EC2::Instance"):
        published.add(("AWS/EC2", "StatusCheckFailed", frozenset(["InstanceId"]), repr({"Ref": instance_id})))
    for group in resources(template_json, "AWS::AutoScaling::AutoScalingGroup").values():
        name = group["Properties"]["AutoScalingGroupName"]
        template_id = group["Properties"]["LaunchTemplate"]["LaunchTemplateId"]["Ref"]
        data = template_json["Resources"][template_id]["Properties"]["LaunchTemplateData"]
        if data.get("Monitoring") == {"Enabled": True}:  # EC2's per-group aggregates need detailed monitoring
            published.add(("AWS/EC2", "StatusCheckFailed", frozenset(["AutoScalingGroupName"]), repr(name)))
        for collection in group["Properties"].get("MetricsCollection", []):
            for metric in collection["Metrics"]:
                published.add(("AWS/AutoScaling", metric, frozenset(["AutoScalingGroupName"]), repr(name)))
    return published


def log_filter_metrics(template_json: dict) -> dict[tuple[str, str], list[str]]:
    """(namespace, metric) -> the filter patterns publishing it."""
    found: dict[tuple[str, str], list[str]] = {}
    for metric_filter in resources(template_json, "AWS::Logs::MetricFilter").values():
        props = metric_filter["Properties"]
        for transformation in props["MetricTransformations"]:
            assert "Dimensions" not in transformation
            key = (transformation["MetricNamespace"], transformation["MetricName"])
            found.setdefault(key, []).append(props["FilterPattern"])
    return found


def alarm_metric_stats(alarm: dict) -> list[tuple[str, str, dict]]:
    if "MetricName" in alarm:
        return [(alarm["Namespace"], alarm["MetricName"], {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])})]
    stats = []
    for query in alarm["Metrics"]:
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            stats.append((metric["Namespace"], metric["MetricName"],
                          {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}))
    return stats


@pytest.mark.parametrize(("env_name", "variant"), [("dev", {}), ("prod", {}), ("prod", {"instance_type": "p5.48xlarge"})],
                         ids=["dev", "prod", "prod-p5"])
def test_every_alarm_watches_a_published_series(env_name, variant):
    from ddlc.infra.user_data import cloudwatch_agent_config, prometheus_scrape_config

    synthesized = synth(env_name, **variant)
    stack, template_json = synthesized.stack, synthesized.template_json
    cluster = stack.stack_name
    published_by_agent: set = set()
    for boot in stack.boot_configs.values():
        config = cloudwatch_agent_config(boot)
        published_by_agent |= agent_metrics(config) | scraped_metrics(config, prometheus_scrape_config(boot))
    from_logs = log_filter_metrics(template_json)
    from_aws = aws_published(template_json)
    alarms = resources(template_json, "AWS::CloudWatch::Alarm")
    assert len(alarms) >= 8
    for alarm_id, alarm in alarms.items():
        stats = alarm_metric_stats(alarm["Properties"])
        assert stats, alarm_id
        for namespace, name, dims in stats:
            key = (namespace, name, frozenset(dims))
            if namespace.startswith("AWS/"):
                value = next(iter(dims.values()))
                assert (namespace, name, frozenset(dims), repr(value)) in from_aws, f"{alarm_id}: {key} {value}"
            elif (namespace, name) in from_logs:
                assert not dims, alarm_id
            else:
                assert key in published_by_agent, f"{alarm_id}: nothing publishes {key}"
                assert dims.get("ClusterName") == cluster, alarm_id  # this cluster's roll-up, not another's


def filter_pattern_matches(pattern: str, line: str) -> bool:
    """CloudWatch Logs term patterns as the alarms use them: `"a b"` (all of), `?"a" ?"b"` (any of)."""
    terms = re.findall(r'(\??)"([^"]+)"', pattern)
    assert terms and re.sub(r'\??"[^"]+"', "", pattern).strip() == "", f"unsupported pattern {pattern!r}"
    optional = [term for mark, term in terms if mark]
    required = [term for mark, term in terms if not mark]
    assert not (optional and required), pattern
    return any(t in line for t in optional) if optional else all(t in line for t in required)


def test_log_alarm_patterns_match_what_the_sources_write_and_nothing_routine():
    from ddlc.infra.alarms import LOG_ALARMS

    template_json = synth("prod").template_json
    patterns = log_filter_metrics(template_json)
    routine = [
        "kernel: [  12.3] efa 0000:10:1d.0: Setup irq:0x10 name:efa-comp@pci:0000:10:1d.0",  # EFA probe at boot
        "step 100/1000 | loss 3.1234 | lr 3.00e-04 | gnorm 0.842 | 120.0 ms/step | 52,000 tok/s",
        "ddlc: resumed from runs/x/checkpoints/step_000100 at step 100",
        "kernel: NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.90.07",
    ]
    for spec in LOG_ALARMS:
        (pattern,) = set(patterns[(f"DDLC/ddlc-prod", spec.metric_name)])
        assert spec.examples
        for line in spec.examples:
            assert filter_pattern_matches(pattern, line), (spec.key, line)
        for line in routine:
            assert not filter_pattern_matches(pattern, line), (spec.key, line)
    # A real CUDA OOM message, as PyTorch writes it.
    import torch

    message = f"{torch.OutOfMemoryError.__module__}.{torch.OutOfMemoryError.__name__}: CUDA out of memory."
    (cuda_pattern,) = set(patterns[("DDLC/ddlc-prod", "cuda_oom_errors")])
    assert filter_pattern_matches(cuda_pattern, message)
