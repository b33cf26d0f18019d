"""The agent's periodic health check: ddlc_node_healthy{check} on /metrics, and after N failed runs in a row the
instance marks itself Unhealthy in its Auto Scaling group — a real `ddlc agent` process against the session's moto
server on 127.0.0.1 (the groups and their instances created there, named for this module) and an instance-metadata
stand-in on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from ddlc.monitor.asg import autoscaling_client, instance_identity, mark_unhealthy
from ddlc.monitor.node_health import HealthMonitor
from ddlc.ops.health import HealthResult
from tests.monitor.helpers import scrape, value_of
from tests.support import MotoServer

REGION = "us-east-1"


class Imds:
    """EC2's instance metadata service (IMDSv2) for one instance id, on 127.0.0.1."""

    def __init__(self, instance_id: str):
        token = "t0ken"

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):
                ok = self.path == "/latest/api/token" and "X-aws-ec2-metadata-token-ttl-seconds" in self.headers
                self._reply(200 if ok else 400, token)

            def do_GET(self):
                if self.headers.get("X-aws-ec2-metadata-token") != token:
                    return self._reply(401, "")
                if self.path == "/latest/dynamic/instance-identity/document":
                    return self._reply(200, json.dumps({"instanceId": instance_id, "region": REGION}))
                self._reply(404, "")

            def _reply(self, code, body):
                self.send_response(code)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def make_group(moto: MotoServer, name: str, size: int = 2) -> list[str]:
    """A fixed-size Auto Scaling group (min = max = desired) from a launch template; its instance ids."""
    kwargs = dict(endpoint_url=moto.url, region_name=REGION)
    ec2 = boto3.client("ec2", **kwargs)
    template = ec2.create_launch_template(LaunchTemplateName=f"{name}-lt", LaunchTemplateData={
        "ImageId": "ami-12c6146b", "InstanceType": "p4d.24xlarge"})["LaunchTemplate"]["LaunchTemplateId"]
    asg = boto3.client("autoscaling", **kwargs)
    asg.create_auto_scaling_group(AutoScalingGroupName=name, MinSize=size, MaxSize=size, DesiredCapacity=size,
                                  LaunchTemplate={"LaunchTemplateId": template}, AvailabilityZones=[f"{REGION}a"])
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    return [i["InstanceId"] for i in group["Instances"]]


def health_of(moto: MotoServer, instance_id: str) -> str:
    asg = boto3.client("autoscaling", endpoint_url=moto.url, region_name=REGION)
    return asg.describe_auto_scaling_instances(InstanceIds=[instance_id])["AutoScalingInstances"][0]["HealthStatus"]


def test_monitor_counts_failed_runs_in_a_row_and_hands_over_once():
    outcomes = iter([False, True, False, False, False, False])
    handed = []
    monitor = HealthMonitor("n1", unhealthy_after=3, on_unhealthy=handed.append,
                            run=lambda: [HealthResult("disk", next(outcomes), "x"), HealthResult("gpus", True, "y")])
    streaks = []
    for _ in range(6):
        monitor.run_once()
        streaks.append(monitor.consecutive_failures)
    assert streaks == [1, 0, 1, 2, 3, 4]  # a healthy run resets the count
    assert handed == [["disk: x"]]  # once, at the third failure in a row


def test_mark_unhealthy_only_inside_a_group(moto, monkeypatch):
    for key, value in moto.env.items():
        monkeypatch.setenv(key, value)
    ids = make_group(moto, "node-health-direct")
    client = autoscaling_client(REGION, moto.url)
    assert mark_unhealthy(client, ids[1]) == "node-health-direct"
    assert health_of(moto, ids[1]) == "Unhealthy" and health_of(moto, ids[0]) == "Healthy"
    loose = boto3.client("ec2", endpoint_url=moto.url, region_name=REGION).run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    assert mark_unhealthy(client, loose) is None  # a head node or a hand-made instance is left alone
    assert instance_identity("http://127.0.0.1:9", timeout_s=0.5) is None  # off EC2: no identity


@pytest.mark.slow
def test_agent_marks_its_own_instance_unhealthy_after_n_failed_checks(moto, tmp_path):
    ids = make_group(moto, "node-health-workers")
    imds = Imds(ids[0])
    env = {**os.environ, **moto.env}
    env.pop("AWS_EC2_METADATA_DISABLED", None)
    # --min-free-gb beyond any disk: the disk check fails on every run, as on a node whose volume filled up.
    agent = subprocess.Popen(
        [sys.executable, "-m", "ddlc", "agent", "--port", "0", "--node", "worker-1", "--health-interval", "0.3",
         "--unhealthy-after", "3", "--replace-unhealthy", "--min-free-gb", "1e12", "--imds-url", imds.url,
         "--autoscaling-endpoint-url", moto.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = agent.stdout.readline()
        assert line.startswith("ddlc agent serving"), line + agent.stderr.read()
        url = line.split()[-1]
        deadline = time.monotonic() + 60
        while health_of(moto, ids[0]) != "Unhealthy":
            assert time.monotonic() < deadline and agent.poll() is None, "the agent never marked its instance"
            time.sleep(0.2)
        samples = scrape(url)
        assert value_of(samples, "ddlc_node_healthy", node="worker-1", check="disk") == 0
        assert value_of(samples, "ddlc_node_healthy", node="worker-1", check="clock") == 1
        assert value_of(samples, "ddlc_node_health_consecutive_failures", node="worker-1") >= 3
        assert health_of(moto, ids[1]) == "Healthy"  # only its own instance
    finally:
        agent.terminate()
        _, stderr = agent.communicate(timeout=20)
        imds.close()
    assert agent.returncode == 0, stderr
    assert f"marked instance {ids[0]} Unhealthy in Auto Scaling group node-health-workers" in stderr
