"""The generated prometheus.yml, run by a real Prometheus: a firing rule reaches the configured Alertmanager
endpoint, and `node` means one thing (the hostname the agent reports), never the hostfile's address."""

from __future__ import annotations

import http.server
import json
from pathlib import Path

from ddlc.monitor.agent import Agent, AgentSettings
from ddlc.monitor.prometheus_config import build_prometheus_config, parse_hostfile
from tests.monitor.helpers import LoopbackHTTPServer, PrometheusServer

ALWAYS_FIRING = """groups:
  - name: test
    rules:
      - alert: TestAlwaysFiring
        expr: vector(1)
        labels:
          severity: info
"""


class AlertReceiver(LoopbackHTTPServer):
    """An HTTP endpoint on 127.0.0.1 that takes Alertmanager API v2 posts (what Prometheus sends)."""

    def __init__(self) -> None:
        self.alerts: list[dict] = []
        received = self.alerts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/api/v2/alerts":
                    received.extend(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)


def test_alerts_reach_the_alertmanager_and_node_is_the_hostname(prometheus_binary: str, tmp_path: Path) -> None:
    receiver = AlertReceiver()
    agent = Agent(AgentSettings(port=0, node="worker-host"))
    (tmp_path / "always.yml").write_text(ALWAYS_FIRING)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1\n")  # a hostfile names the node by address, the agent by hostname
    config = build_prometheus_config(parse_hostfile(hostfile), agent_port=agent.port, train_port=None,
                                     scrape_interval="1s", rule_files=["always.yml"],
                                     alertmanagers=[f"127.0.0.1:{receiver.port}"])
    # Alerts that fire before the Alertmanager list is loaded are dropped and sent again after the resend delay
    # (1 minute by default): a short one keeps the test short.
    server = PrometheusServer(prometheus_binary, tmp_path, config, extra_args=("--rules.alert.resend-delay=1s",))
    try:
        server.wait_for(lambda: [a for a in receiver.alerts if a["labels"].get("alertname") == "TestAlwaysFiring"],
                        "the firing alert at the Alertmanager endpoint")
        server.wait_for(lambda: server.query('ddlc_agent_info{job="ddlc-agent"}'), "the agent scraped")
        assert {s["metric"]["node"] for s in server.query('{job="ddlc-agent", node!=""}')} == {"worker-host"}
        assert server.query('{node="127.0.0.1"}') == []  # not on `up`, not anywhere
    finally:
        server.stop()
        agent.close()
        receiver.close()
