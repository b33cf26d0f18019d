"""A real Prometheus scrapes a real 2-worker torchrun training job (and a node agent) and answers queries; the
job runs the host-memory checkpoint tier too, so the checkpoint series come with tier storage and memory."""

from __future__ import annotations

import subprocess


from ddlc.monitor.agent import Agent, AgentSettings
from ddlc.monitor.prometheus_config import build_prometheus_config, parse_hostfile
from tests.monitor.helpers import PrometheusServer
from tests.support import CONFIG, FAST, TRAIN_PY, child_env, free_port, stop_job, torchrun

RUN = "scraped"


def _two_free_ports() -> int:
    import socket

    for _ in range(20):
        base = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
                return base
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def test_prometheus_scrapes_a_running_two_worker_job(prometheus_binary, tmp_path):
    base = _two_free_ports()
    job = subprocess.Popen(
        torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), "--config", str(CONFIG), *FAST,
                 "training.max_steps=100000", "checkpoint.interval_steps=20", "checkpoint.memory_interval_steps=3",
                 f"checkpoint.memory_dir={tmp_path / 'shm'}", f"monitoring.metrics_port={base}",
                 f"monitoring.run_dir={tmp_path}", f"monitoring.run_name={RUN}",
                 "monitoring.instance_type=p4d.24xlarge"),
        cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    agent = Agent(AgentSettings(port=0, node="127.0.0.1", checkpoint_path=tmp_path))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=2\n")
    config = build_prometheus_config(parse_hostfile(hostfile), agent_port=agent.port, train_port=base,
                                     scrape_interval="1s")
    server = PrometheusServer(prometheus_binary, tmp_path, config)
    try:
        server.wait_for(lambda: len(server.query("up == 1")) == 3, "agent and both ranks up", timeout=60)
        for tier in ("storage", "memory"):
            server.wait_for(lambda: server.query(f'ddlc_checkpoint_last_success_timestamp_seconds{{run="{RUN}",'
                                                 f'tier="{tier}"}}'), f"a committed {tier} checkpoint", timeout=60)
        saves = server.query(f'ddlc_checkpoints_total{{run="{RUN}",result="success"}}')
        assert {s["metric"]["tier"] for s in saves} == {"storage", "memory"}  # rank 0's; no peer tier on one node
        steps = {s["metric"]["tier"]: int(float(s["value"][1]))
                 for s in server.query(f'ddlc_checkpoint_last_step{{run="{RUN}"}}')}
        assert steps["storage"] % 20 == 0 and steps["memory"] % 3 == 0, steps
        # Both ranks' losses: waited for, since on a loaded machine one rank's 1 s scrape can time out and
        # its series go stale for a moment (a single query then sees rank 0 only).
        def both_losses():
            found = server.query(f'ddlc_train_loss{{run="{RUN}"}}')
            return found if len(found) == 2 else None

        losses = server.wait_for(both_losses, "both ranks' loss", timeout=60)
        assert sorted(s["metric"]["rank"] for s in losses) == ["0", "1"]
        assert all(0 < float(s["value"][1]) < 6 for s in losses)
        server.wait_for(lambda: server.query(f'rate(ddlc_train_steps_total{{run="{RUN}"}}[5s]) > 0'),
                        "steps advancing")
        tokens = server.query(f'sum by (run) (ddlc_train_tokens_per_second{{run="{RUN}"}})')
        assert float(tokens[0]["value"][1]) > 1000
        cost = server.query(f'ddlc_cost_usd_total{{run="{RUN}"}}')
        assert len(cost) == 1 and float(cost[0]["value"][1]) > 0  # p4d price x 1 node x wall time
        for name in ("ddlc_train_step_seconds", "ddlc_network_receive_bytes_total", "ddlc_cpu_utilization_ratio"):
            assert server.query(name), name
    finally:
        server.stop()
        agent.close()
        stop_job(job)
