"""The node agent served on an ephemeral port and scraped over HTTP, in-process and as `ddlc agent`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ddlc.errors import UserError
from ddlc.monitor.agent import Agent, AgentSettings
from tests.monitor.helpers import sample_names, scrape, value_of
from tests.monitor.test_network import make_efa_tree

REPO_SRC = Path(__file__).resolve().parents[2] / "src"


def test_agent_serves_node_metrics(tmp_path: Path) -> None:
    make_efa_tree(tmp_path / "ib", "rdmap0", "1", {"rx_bytes": "42", "tx_bytes": "24"})
    settings = AgentSettings(port=0, node="node-a", checkpoint_path=tmp_path, infiniband_root=tmp_path / "ib")
    with Agent(settings) as agent:
        assert agent.url == f"http://127.0.0.1:{agent.port}/metrics"
        samples = scrape(agent.url)
    names = sample_names(samples)
    assert value_of(samples, "ddlc_agent_info", node="node-a") == 1
    driver_gpus = Path("/proc/driver/nvidia/gpus")  # what the kernel driver registered (NVML sees the same)
    assert value_of(samples, "ddlc_gpus", node="node-a") == (
        len(list(driver_gpus.iterdir())) if driver_gpus.is_dir() else 0)
    assert {"ddlc_network_receive_bytes_total", "ddlc_network_transmit_bytes_total", "ddlc_cpu_utilization_ratio",
            "ddlc_memory_used_bytes", "ddlc_disk_free_bytes"} <= names
    assert value_of(samples, "ddlc_efa_receive_bytes_total", device="rdmap0") == 42
    assert value_of(samples, "ddlc_network_receive_bytes_total", device="lo", node="node-a") > 0  # the scrape itself


def test_agent_rejects_missing_checkpoint_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="checkpoint-path .*absent does not exist"):
        Agent(AgentSettings(port=0, checkpoint_path=tmp_path / "absent"))


def _start_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO_SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-m", "ddlc", "agent", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def test_cli_agent_runs_until_sigterm(tmp_path: Path) -> None:
    process = _start_cli("--port", "0", "--node", "cli-node", "--checkpoint-path", str(tmp_path))
    try:
        line = process.stdout.readline()
        assert line.startswith("ddlc agent serving http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[-1]
        assert value_of(scrape(url), "ddlc_agent_info", node="cli-node") == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_agent_bad_path_is_one_line_exit_2(tmp_path: Path) -> None:
    process = _start_cli("--port", "0", "--checkpoint-path", str(tmp_path / "nope"))
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --checkpoint-path {tmp_path / 'nope'} does not exist"]
    assert "Traceback" not in stderr


def _raw(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_every_endpoint_passes_promtool_check_metrics(tmp_path: Path, promtool: str) -> None:
    """What the agent (GPUs through a stand-in NVML, EFA, disk) and a training rank really serve over HTTP passes
    Prometheus' own linter: names, suffixes (`_count` is reserved for histograms/summaries), HELP and TYPE."""
    from ddlc.monitor.training import TrainingMetrics
    from tests.monitor.test_gpu import StandInNvml

    make_efa_tree(tmp_path / "ib", "rdmap0", "1", {"rx_bytes": "42", "tx_bytes": "24", "rdma_read_bytes": "1",
                                                   "rdma_write_bytes": "2"})
    settings = AgentSettings(port=0, node="node-a", checkpoint_path=tmp_path, infiniband_root=tmp_path / "ib")
    with Agent(settings, nvml=StandInNvml()) as agent:
        pages = {"agent": _raw(agent.url)}
    rank = TrainingMetrics("lint", rank=0, world_size=1, node="node-a", instance_type=None, num_nodes=1, port=0)
    try:
        rank.observe_step(1, 1.0, 1e-3, 1.0, 0.1, 10, 1, compute_seconds=0.05, tokens_seen=10,
                          data_wait_seconds=0.01, host_memory_peak_bytes=2**30, gpu_memory_peak_bytes=2**30)
        rank.observe_checkpoint(1, 0.5, True, 1.0)
        rank.publish()
        pages["rank"] = _raw(rank.url)
    finally:
        rank.close()
    assert "ddlc_gpu_utilization_ratio" in pages["agent"] and "ddlc_efa_rdma_bytes_total" in pages["agent"]
    for name, text in pages.items():
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), name


def test_agent_with_an_instance_type_exports_its_price(tmp_path: Path) -> None:
    from ddlc.monitor.pricing import default_price_table

    settings = AgentSettings(port=0, node="node-a", infiniband_root=tmp_path / "ib", instance_type="g5.xlarge")
    with Agent(settings) as agent:
        samples = scrape(agent.url)
    assert value_of(samples, "ddlc_node_price_usd_per_hour", node="node-a", instance_type="g5.xlarge") == \
        default_price_table()["g5.xlarge"]
    assert value_of(samples, "ddlc_agent_start_timestamp_seconds", node="node-a") > 1.7e9
    with Agent(AgentSettings(port=0, node="node-b", infiniband_root=tmp_path / "ib")) as agent:
        assert "ddlc_node_price_usd_per_hour" not in sample_names(scrape(agent.url))  # not priced: no series


def test_cli_agent_unknown_instance_type_is_one_line_exit_2(tmp_path: Path) -> None:
    for value, message in (("x9.mega", "'x9.mega' has no price"), (" ", "--instance-type: empty")):
        process = _start_cli("--port", "0", "--instance-type", value)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 2 and "Traceback" not in stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], stderr
