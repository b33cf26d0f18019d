"""The network panels leave out interfaces whose traffic is not the node's own (#17 item 9): loopback, ifb
(traffic shaping), veth pairs and docker bridges. Checked on this machine's real interfaces (lo is always there;
this one also has ifb0/ifb1) through promtool over what the agent's collector exported, and through the local
sampler; the CloudWatch searches exclude `lo`."""

from __future__ import annotations

import re
import time
from pathlib import Path

import psutil

from ddlc.dashboards.definition import HIDDEN_INTERFACES, dashboard
from ddlc.dashboards.sampler import HostSampler
from ddlc.monitor.network import NetworkCollector
from tests.monitor.helpers import prometheus_tool
from tests.monitor.promtool_model import Recording, run_rule_test

PANELS = ("network-receive", "network-transmit", "network-packets", "network-errors")


def _interfaces() -> tuple[set[str], set[str]]:
    names = set(psutil.net_io_counters(pernic=True))
    hidden = {name for name in names if re.fullmatch(HIDDEN_INTERFACES, name)}
    return names - hidden, hidden


def test_the_pattern_hides_virtual_interfaces_only():
    for name in ("lo", "ifb0", "ifb1", "veth1a2b3c", "docker0", "br-0123456789ab", "virbr0"):
        assert re.fullmatch(HIDDEN_INTERFACES, name), name
    for name in ("eth0", "ens5", "enp0s3", "efa0", "rdmap16s27", "bond0", "lower", "ib0"):
        assert not re.fullmatch(HIDDEN_INTERFACES, name), name


def test_promql_and_local_series_leave_out_hidden_interfaces(tmp_path: Path):
    shown, hidden = _interfaces()
    assert "lo" in hidden
    board = dashboard("network-performance")
    series = [s for panel_id in PANELS for s in board.panel(panel_id).series]

    # PromQL: the panels' own expressions over two real scrapes of this machine, counted per device.
    recording = Recording()
    collector = NetworkCollector("n1", infiniband_root=tmp_path / "no-efa")
    for minute in range(3):
        recording.scrape(minute, collector, job="ddlc-agent", instance="n1:9400")
    expr_tests = [{
        "expr": f"count by (device) ({s.promql.replace('$__rate_interval', '3m').replace('$node', 'n1')})", "eval_time": "2m",
        "exp_samples": [{"labels": f'{{device="{device}"}}', "value": 1} for device in sorted(shown)],
    } for s in series]
    result = run_rule_test(prometheus_tool("promtool"), tmp_path, "groups: []\n", recording, expr_tests=expr_tests)
    assert result.returncode == 0, result.stdout + result.stderr

    # The local page: the sampler's series are named by device.
    sampler = HostSampler(node="n1", infiniband_root=tmp_path / "no-efa")
    try:
        sampler.sample_once()
        time.sleep(0.05)
        sampler.sample_once()
        for s in series:
            assert {name for name, _, _ in sampler.series(s.local)} == shown, s.promql
    finally:
        sampler.close()

    # CloudWatch: the agent's `net` plugin names the interface in the `interface` dimension.
    for s in series:
        assert 'NOT interface="lo"' in s.cloudwatch
