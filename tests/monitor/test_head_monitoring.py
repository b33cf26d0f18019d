"""The head node's Prometheus + Alertmanager, as the boot writes them, run for real (Debian's packages):

    fake rank (127.0.0.1:<train port>, ddlc_train_loss NaN) <── Prometheus (file_sd targets from a hostfile,
        the shipped rules, the alerting block) ──> Alertmanager (the rendered config, webhook receiver standing
        in for SNS) ──> this test's webhook: DDLCLossNaN arrives
    then the hostfile changes (a replaced node) and the same Prometheus scrapes the new target, no restart.

The SNS variant (what the stack deploys) is written by the CLI the boot runs and checked by promtool/amtool.
"""

from __future__ import annotations

import grp
import http.server
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ddlc.cli.main import app
from ddlc.errors import UserError
from ddlc.monitor.head_config import WebhookReceiver, write_head_monitoring, write_targets
from tests.monitor.helpers import LoopbackHTTPServer, PrometheusServer, free_port, prometheus_tool

NAN_RANK = b"""# TYPE ddlc_train_loss gauge
ddlc_train_loss{run="r1",rank="0",node="worker-1"} NaN
"""


class _Server(LoopbackHTTPServer):
    """One HTTP server on 127.0.0.1: GET serves `body`, POST bodies are kept (JSON)."""

    def __init__(self, body: bytes = b"") -> None:
        self.posts: list[dict] = []
        posts = self.posts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                posts.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)


def _check(tool: str, *args: str) -> None:
    result = subprocess.run([prometheus_tool(tool), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_shipped_rule_fires_through_alertmanager_to_the_receiver_and_targets_follow_the_hostfile(
        prometheus_binary: str, tmp_path: Path) -> None:
    rank, webhook = _Server(NAN_RANK), _Server()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\n")
    am_port = free_port()
    paths = write_head_monitoring(
        tmp_path / "mon", WebhookReceiver(f"http://127.0.0.1:{webhook.port}/alerts"), hostfile=hostfile,
        agent_port=free_port(), train_port=rank.port, scrape_interval="1s", alertmanager_port=am_port,
        local_agent=None, group_wait="1s", group_interval="1s", repeat_interval="1h",
    )
    _check("promtool", "check", "config", str(paths["prometheus"]))
    _check("amtool", "check-config", str(paths["alertmanager"]))
    alertmanager = subprocess.Popen(
        [prometheus_tool("prometheus-alertmanager"), f"--config.file={paths['alertmanager']}",
         f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
         "--cluster.listen-address="],
        stdout=(tmp_path / "am.log").open("w"), stderr=subprocess.STDOUT,
    )
    # The written prometheus.yml itself (PrometheusServer writes the same document back in place).
    config = yaml.safe_load(paths["prometheus"].read_text())
    server = None
    try:
        server = PrometheusServer(prometheus_binary, paths["prometheus"].parent, config,
                                  extra_args=("--rules.alert.resend-delay=1s",))

        def delivered() -> list[dict]:
            return [a for post in webhook.posts for a in post["alerts"]
                    if a["labels"].get("alertname") == "DDLCLossNaN" and a["status"] == "firing"]

        server.wait_for(delivered, "DDLCLossNaN at the receiver, through Alertmanager\n"
                        + (tmp_path / "am.log").read_text()[-2000:], timeout=40)
        assert delivered()[0]["labels"]["run"] == "r1"

        # A replaced node: the timer rewrites the targets; Prometheus follows without a restart.
        hostfile.write_text("localhost slots=1\n")
        write_targets(paths["ddlc-train"].parent, hostfile, train_port=rank.port)

        def scraped_instances() -> set[str]:
            active = server.api("targets", state="active")["activeTargets"]
            return {t["labels"]["instance"] for t in active if t["labels"]["job"] == "ddlc-train"
                    and t["health"] == "up"}

        server.wait_for(lambda: scraped_instances() == {f"localhost:{rank.port}"}, "the new target scraped")
    finally:
        if server:
            server.stop()
        alertmanager.terminate()
        alertmanager.wait(timeout=30)
        rank.close()
        webhook.close()


def test_the_boots_sns_configs_and_units_are_valid(tmp_path: Path) -> None:
    """What `ddlc monitor head-setup` (the boot's command) writes with the stack's SNS topic."""
    mon, units = tmp_path / "mon", tmp_path / "units"
    result = CliRunner().invoke(app, [
        "monitor", "head-setup", "--dir", str(mon), "--hostfile", str(tmp_path / "none"),
        "--sns-topic-arn", "arn:aws:sns:us-east-1:123456789012:ddlc-prod-Alerts-1AB", "--region", "us-east-1",
        "--retention-size", "50GB", "--units-dir", str(units), "--grafana",
        "--grafana-provisioning", str(tmp_path / "provisioning")])
    assert result.exit_code == 0, result.output
    _check("promtool", "check", "config", str(mon / "prometheus.yml"))
    _check("amtool", "check-config", str(mon / "alertmanager.yml"))
    # Receivers may carry tokens: only the service's group (the units' User=prometheus) may read the file.
    mode = (mon / "alertmanager.yml").stat()
    assert mode.st_mode & 0o777 == 0o640 and grp.getgrgid(mode.st_gid).gr_name == "prometheus", oct(mode.st_mode)
    (receiver,) = yaml.safe_load((mon / "alertmanager.yml").read_text())["receivers"]
    assert receiver["sns_configs"][0]["topic_arn"] == "arn:aws:sns:us-east-1:123456789012:ddlc-prod-Alerts-1AB"
    assert receiver["sns_configs"][0]["sigv4"] == {"region": "us-east-1"}  # keys from the instance role
    prometheus = yaml.safe_load((mon / "prometheus.yml").read_text())
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    assert json.loads((mon / "targets" / "ddlc-agent.json").read_text()) == []  # no hostfile yet
    unit = (units / "ddlc-prometheus.service").read_text()
    assert "--storage.tsdb.retention.size=50GB" in unit and "--web.listen-address=127.0.0.1:9090" in unit
    assert "Restart=on-failure" in unit and "WantedBy=multi-user.target" in unit
    assert "--web.listen-address=127.0.0.1:9093" in (units / "ddlc-alertmanager.service").read_text()
    # Grafana (grafana: head): the exported dashboards and the local Prometheus, provisioned; 127.0.0.1 only.
    datasource = yaml.safe_load((tmp_path / "provisioning/datasources/ddlc.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://127.0.0.1:9090"
    provider = yaml.safe_load((tmp_path / "provisioning/dashboards/ddlc.yaml").read_text())
    boards = Path(provider["providers"][0]["options"]["path"])
    assert len(list(boards.glob("*.json"))) == 4
    dropin = (units / "grafana-server.service.d/ddlc.conf").read_text()
    assert "GF_SERVER_HTTP_ADDR=127.0.0.1 GF_SERVER_HTTP_PORT=3000" in dropin
    password = mon / "grafana.env"
    assert oct(password.stat().st_mode & 0o777) == "0o600" and f"EnvironmentFile={password}" in dropin
    first = password.read_text()
    assert CliRunner().invoke(app, ["monitor", "head-setup", "--dir", str(mon), "--webhook-url", "http://h:1/",
                                    "--units-dir", str(units), "--grafana", "--grafana-provisioning",
                                    str(tmp_path / "provisioning")]).exit_code == 0
    assert password.read_text() == first  # a rerun keeps the admin password Grafana was created with


@pytest.mark.parametrize("args, message", [
    (["--region", "us-east-1"], "give one receiver"),
    (["--sns-topic-arn", "arn:aws:sns:us-east-1:123456789012:t"], "--sns-topic-arn needs --region"),
    (["--sns-topic-arn", "not-an-arn", "--region", "us-east-1"], "is not an SNS topic ARN"),
    # Signed for and sent to another region than the topic's: every alert would fail to publish.
    (["--sns-topic-arn", "arn:aws:sns:us-east-1:123456789012:t", "--region", "eu-west-1"], "topic's region"),
    (["--webhook-url", "http://127.0.0.1:1/x", "--retention-size", "lots"], "retention size 'lots'"),
    (["--webhook-url", "http://127.0.0.1:1/x", "--hostfile", "EMPTY"], "lists no hosts"),
    # A trailing newline passed `^...$` checks: in a unit it ends ExecStart= early (Prometheus then listened on
    # every interface); in alertmanager.yml it makes a topic or region SNS rejects at the first alert.
    (["--webhook-url", "http://127.0.0.1:1/x", "--retention-size", "50GB\n"], "retention size '50GB\\n'"),
    # Past 2^63 bytes: Prometheus would not start ("units: overflow parsing unit").
    (["--webhook-url", "http://127.0.0.1:1/x", "--retention-size", "99999999999TB"], "retention size"),
    (["--sns-topic-arn", "arn:aws:sns:us-east-1:123456789012:t\n", "--region", "us-east-1"], "not an SNS topic"),
    (["--sns-topic-arn", "arn:aws:sns:us-east-1:123456789012:t", "--region", "us-east-1\n"], "not an AWS region"),
    (["--webhook-url", "http://127.0.0.1:1/x\n"], "is not an http(s) URL"),
    # URLs Alertmanager cannot parse: it would not start, and no alert would go anywhere.
    (["--webhook-url", "http://127.0.0.1:abc/x"], "is not an http(s) URL"),
    (["--webhook-url", "http://127.0.0.1:99999/x"], "is not an http(s) URL"),
    (["--webhook-url", "http://127.0.0.1:0/x"], "is not an http(s) URL"),
    (["--webhook-url", "http://127.0.0.1:9/%zz"], "is not an http(s) URL"),
])
def test_head_setup_rejects_bad_input_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").write_text("# discovery wrote nothing\n")
    args = [str(tmp_path / "empty") if arg == "EMPTY" else arg for arg in args]
    result = CliRunner().invoke(app, ["monitor", "head-setup", "--dir", str(tmp_path / "m"),
                                      "--units-dir", str(tmp_path / "u"), *args])
    # A UserError: `ddlc` prints it in one line and exits 2 (ddlc.errors.exit_with)
    assert isinstance(result.exception, UserError) and message in str(result.exception), result.output
    assert not (tmp_path / "m").exists() and not (tmp_path / "u").exists()  # nothing half-written


@pytest.mark.parametrize("directory", ["my monitoring", "m%h", "m$X"])
def test_head_setup_refuses_a_directory_the_units_cannot_name(tmp_path: Path, directory: str) -> None:
    """The directory goes unquoted into ExecStart=, where systemd splits at spaces and expands % and $."""
    result = CliRunner().invoke(app, ["monitor", "head-setup", "--dir", str(tmp_path / directory),
                                      "--webhook-url", "http://127.0.0.1:1/x", "--units-dir", str(tmp_path / "u")])
    assert isinstance(result.exception, UserError) and "monitoring directory" in str(result.exception), result.output
    assert not (tmp_path / directory).exists() and not (tmp_path / "u").exists()


def test_head_setup_with_a_relative_directory_writes_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    """prometheus.yml's paths are read relative to the file's directory, the units' from `/`: both absolute."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["monitor", "head-setup", "--dir", "mon", "--webhook-url", "http://127.0.0.1:1/x",
                                      "--units-dir", "units"])
    assert result.exit_code == 0, result.output
    _check("promtool", "check", "config", str(tmp_path / "mon" / "prometheus.yml"))
    assert f"--config.file={tmp_path}/mon/prometheus.yml " in (tmp_path / "units/ddlc-prometheus.service").read_text()


@pytest.mark.parametrize("blocked", ["mon/prometheus.yml/", "mon/targets/ddlc-train.json/", "units", "mon/grafana.env/"])
def test_head_setup_writes_nothing_when_a_destination_is_in_the_way(tmp_path: Path, blocked: str) -> None:
    """A destination that is a directory (or a units "directory" that is a file) is named before any file is
    replaced: a rerun never leaves some configs new and the rest old."""
    (tmp_path / blocked).mkdir(parents=True) if blocked.endswith("/") else (tmp_path / blocked).write_text("")
    hostfile = tmp_path / "hosts"
    hostfile.write_text("ip-10-0-0-1 slots=2\n")
    result = CliRunner().invoke(app, [
        "monitor", "head-setup", "--dir", str(tmp_path / "mon"), "--hostfile", str(hostfile),
        "--webhook-url", "http://127.0.0.1:1/x", "--units-dir", str(tmp_path / "units"), "--grafana",
        "--grafana-provisioning", str(tmp_path / "provisioning")])
    assert isinstance(result.exception, UserError), result.output
    assert str(tmp_path / blocked.rstrip("/")) in str(result.exception)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == (["hosts"] + ([blocked] if not blocked.endswith("/") else [])), written
    targets = CliRunner().invoke(app, ["monitor", "targets", "--hostfile", str(hostfile),
                                       "--dir", str(tmp_path / "mon" / "targets")])
    if "targets" in blocked:  # the hostfile timer's command: neither file replaced
        assert isinstance(targets.exception, UserError) and "ddlc-train.json" in str(targets.exception)
        assert not (tmp_path / "mon/targets/ddlc-agent.json").exists()


def test_a_rerun_without_the_hostfile_keeps_the_timers_targets(tmp_path: Path) -> None:
    """The boot writes empty targets (no hostfile yet); a rerun by hand once the timer has written them (or with a
    --hostfile that is not there) must not empty them, which would stop every scrape until the timer's next run.
    A rerun is otherwise byte-identical."""
    hostfile = tmp_path / "hosts"
    hostfile.write_text("ip-10-0-0-1 slots=2\n")
    mon = tmp_path / "mon"
    args = ["monitor", "head-setup", "--dir", str(mon), "--webhook-url", "http://127.0.0.1:1/x",
            "--units-dir", str(tmp_path / "u")]
    assert CliRunner().invoke(app, [*args, "--hostfile", str(tmp_path / "not-yet")]).exit_code == 0
    assert json.loads((mon / "targets/ddlc-agent.json").read_text()) == []
    write_targets(mon / "targets", hostfile)  # the hostfile timer
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert CliRunner().invoke(app, [*args, "--hostfile", str(tmp_path / "typo")]).exit_code == 0
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert json.loads((mon / "targets/ddlc-agent.json").read_text()) == [{"targets": ["ip-10-0-0-1:9400"]}]
