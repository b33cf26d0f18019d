"""prometheus.yml generated from a hostfile: parsing, targets, `promtool check config`, and the CLI."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ddlc.cli.main import app
from ddlc.errors import UserError
from ddlc.monitor.alert_rules import write_rules
from ddlc.monitor.prometheus_config import HostEntry, build_prometheus_config, parse_hostfile, render_prometheus_config


def test_hostfile_both_styles(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# nodes\nip-10-0-0-1 slots=8\n\nip-10-0-0-2 slots=8 max_slots=8  # second\n10.0.0.3\n")
    assert parse_hostfile(hostfile) == [
        HostEntry("ip-10-0-0-1", 8), HostEntry("ip-10-0-0-2", 8), HostEntry("10.0.0.3", 1)
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "lists no hosts"),
        ("# only a comment\n", "lists no hosts"),
        ("node1 slots=0\n", "line 1: expected `slots=N` with N >= 1, got 'slots=0'"),
        ("node1\nnode2 cpus=4\n", "line 2: expected `slots=N`"),
        ("node1\nnode1\n", "line 2: host node1 is listed twice"),
        ("bad_host!\n", "line 1: 'bad_host!' is not a host name"),
    ],
)
def test_bad_hostfiles_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text(content)
    with pytest.raises(UserError) as raised:
        parse_hostfile(hostfile)
    assert message in str(raised.value) and str(hostfile) in str(raised.value)


def test_targets_cover_agents_and_every_rank() -> None:
    config = build_prometheus_config([HostEntry("a", 2), HostEntry("b", 1)], train_port=9500, rule_files=["r.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert [g["targets"] for g in jobs["ddlc-agent"]["static_configs"]] == [["a:9400"], ["b:9400"]]
    assert [g["targets"] for g in jobs["ddlc-train"]["static_configs"]] == [["a:9500", "a:9501"], ["b:9500"]]
    assert all("labels" not in g for job in jobs.values() for g in job["static_configs"])  # node: the samples' own
    assert config["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["localhost:9093"]}]}]}
    assert "alerting" not in build_prometheus_config([HostEntry("a")], alertmanagers=())
    with pytest.raises(UserError, match="alertmanager 'am' is not host:port"):
        build_prometheus_config([HostEntry("a")], alertmanagers=["am"])
    assert config["rule_files"] == ["r.yml"]
    only_agents = build_prometheus_config([HostEntry("a", 2)], train_port=None)
    assert [job["job_name"] for job in only_agents["scrape_configs"]] == ["ddlc-agent"]
    with pytest.raises(UserError, match="not a Prometheus duration"):
        build_prometheus_config([HostEntry("a")], scrape_interval="fast")
    # A trailing newline passed the `^...$` checks and gave a config promtool rejects.
    with pytest.raises(UserError, match="not a Prometheus duration"):
        build_prometheus_config([HostEntry("a")], scrape_interval="15s\n")
    # Past 2^63 ns promtool says "duration out of range"; 0 silently became Prometheus's default 1m.
    for interval in ("99999999999999h", "0s", "0m0s"):
        with pytest.raises(UserError, match="not a Prometheus duration"):
            build_prometheus_config([HostEntry("a")], scrape_interval=interval)
    assert build_prometheus_config([HostEntry("a")], scrape_interval="1h")["global"]["scrape_interval"] == "1h"
    with pytest.raises(UserError, match="is not host:port"):
        build_prometheus_config([HostEntry("a")], alertmanagers=["am\n:9093"])


def test_promtool_accepts_generated_config(promtool: str, tmp_path: Path) -> None:
    write_rules(tmp_path)
    hosts = [HostEntry("ip-10-0-0-1", 8), HostEntry("ip-10-0-0-2", 8)]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(render_prometheus_config(build_prometheus_config(hosts, rule_files=["ddlc-alerts.yml"])))
    result = subprocess.run([promtool, "check", "config", str(config_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_cli_prometheus_config_and_rules(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("worker-1 slots=2\n")
    runner = CliRunner()
    result = runner.invoke(app, ["monitor", "prometheus-config", "--hostfile", str(hostfile), "--rules", "ddlc-alerts.yml"])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(result.stdout)
    assert config["scrape_configs"][1]["static_configs"][0]["targets"] == ["worker-1:9500", "worker-1:9501"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["localhost:9093"]
    result = runner.invoke(app, ["monitor", "prometheus-config", "--hostfile", str(hostfile),
                                 "--alertmanager", "head:9093", "--alertmanager", "backup:9093"])
    targets = yaml.safe_load(result.stdout)["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert result.exit_code == 0 and targets == ["head:9093", "backup:9093"]
    result = runner.invoke(app, ["monitor", "prometheus-config", "--hostfile", str(hostfile), "--no-alertmanager"])
    assert result.exit_code == 0 and "alerting" not in yaml.safe_load(result.stdout)

    out = tmp_path / "prom.yml"
    result = runner.invoke(app, ["monitor", "prometheus-config", "--hostfile", str(hostfile), "-o", str(out), "--no-training"])
    assert result.exit_code == 0 and len(yaml.safe_load(out.read_text())["scrape_configs"]) == 1

    rules_out = tmp_path / "alerts.yml"
    assert runner.invoke(app, ["monitor", "rules", "-o", str(rules_out)]).exit_code == 0
    assert "DDLCStragglerRank" in rules_out.read_text()


def test_cli_bad_hostfile_is_one_line_exit_2(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    result = subprocess.run(
        [sys.executable, "-m", "ddlc", "monitor", "prometheus-config", "--hostfile", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(src)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: hostfile {tmp_path / 'missing'} cannot be read: No such file or directory"]


@pytest.mark.parametrize("source", ["/dev/zero", "fifo", "big"])
def test_a_hostfile_that_never_ends_is_refused_without_reading_it_all(tmp_path: Path, source: str) -> None:
    """/dev/zero filled the memory (MemoryError traceback, or the OOM killer on the head node's timer), a FIFO hung
    it, a many-GB file was read whole before the size check."""
    path = Path(source) if source.startswith("/") else tmp_path / source
    if source == "fifo":
        os.mkfifo(path)
    elif source == "big":
        with path.open("wb") as handle:
            handle.truncate(1 << 40)  # sparse: 1 TiB that takes no disk
    result = subprocess.run([sys.executable, "-m", "ddlc", "monitor", "targets", "--hostfile", str(path),
                             "--dir", str(tmp_path / "t")], capture_output=True, text=True, timeout=60,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert str(path) in result.stderr and not (tmp_path / "t").exists()
