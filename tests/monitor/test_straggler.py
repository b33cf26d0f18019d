"""A slowed rank is named by the straggler rule: a real 2-rank DDP job (torchrun, gloo) where rank 1 sleeps in a
forward hook, scraped by a real Prometheus that runs the shipped rules (#17 item 2). The step time cannot tell
the ranks apart (the gradient all-reduce makes them equal); the compute time up to the all-reduce can."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from ddlc.monitor.alert_rules import rules_text, write_rules
from ddlc.monitor.prometheus_config import build_prometheus_config, parse_hostfile
from tests.monitor.helpers import PrometheusServer
from tests.monitor.test_training_job_scrape import _two_free_ports
from tests.support import CONFIG, FAST, TRAIN_PY, child_env, stop_job, torchrun

RUN = "straggling"
SLOW_RANK = f'''
import os, runpy, sys, time
import torch

if os.environ.get("RANK") == "1":  # rank 1 loses 0.2 s before every forward: a slow data loader, a sick GPU
    def stall(module, args):
        if type(module).__name__ == "DistributedDataParallel":
            time.sleep(0.2)
    torch.nn.modules.module.register_module_forward_pre_hook(stall)
sys.argv[0] = {str(TRAIN_PY)!r}
runpy.run_path({str(TRAIN_PY)!r}, run_name="__main__")
'''


def straggler_expression() -> str:
    for group in yaml.safe_load(rules_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "DDLCStragglerRank":
                return rule["expr"]
    raise AssertionError("no DDLCStragglerRank rule")


def test_the_straggler_rule_names_the_slowed_rank(prometheus_binary: str, tmp_path: Path) -> None:
    base = _two_free_ports()
    script = tmp_path / "slow_rank_train.py"
    script.write_text(SLOW_RANK)
    write_rules(tmp_path)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=2\n")
    config = build_prometheus_config(parse_hostfile(hostfile), agent_port=base + 2, train_port=base,
                                     scrape_interval="1s", rule_files=["ddlc-alerts.yml"], alertmanagers=())
    server = PrometheusServer(prometheus_binary, tmp_path, config)
    job = subprocess.Popen(
        torchrun("--standalone", "--nproc_per_node=2", str(script), "--config", str(CONFIG), *FAST,
                 "training.max_steps=100000", "checkpoint.enabled=false", f"monitoring.metrics_port={base}",
                 f"monitoring.run_dir={tmp_path}", f"monitoring.run_name={RUN}"),
        cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # 20 steps per rank seen by Prometheus, with compute times from both ranks
        def measured() -> bool:
            if job.poll() is not None:
                raise AssertionError(f"the job exited ({job.returncode}):\n{job.communicate()[1][-4000:]}")
            return len(server.query(f'ddlc_train_compute_steps_total{{run="{RUN}"}} >= 20')) == 2

        server.wait_for(measured, "both ranks' compute times", timeout=120)
        named = server.wait_for(lambda: server.query(straggler_expression()), "the straggler expression", timeout=30)
        assert [(s["metric"]["run"], s["metric"]["rank"]) for s in named] == [(RUN, "1")]
        # The step times alone could not tell: within 20% of each other (the all-reduce waits for rank 1).
        steps = {s["metric"]["rank"]: float(s["value"][1])
                 for s in server.query(f'ddlc:train_step_seconds:avg5m{{run="{RUN}"}}')}
        assert steps and max(steps.values()) < 1.2 * min(steps.values()), steps
    finally:
        server.stop()
        stop_job(job)
