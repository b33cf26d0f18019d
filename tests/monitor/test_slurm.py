"""Slurm metrics (ddlc.monitor.slurm) from the session's real Slurm cluster (tests/scheduler/cluster.py).

    the shared `slurm` fixture: slurmctld on host a, slurmd on hosts b and c (one cluster per test session)
        host c drained (reason ddlc-test); sbatch: one exclusive job running on host b, one pending,
        a 3-task array pending
        -> in host a's namespace with the cluster's SLURM_CONF: the exact squeue/sinfo commands the collector runs
           (raw output), `ddlc agent --slurm-metrics`'s /metrics (curl from inside the namespace)
        -> slurm.conf changed through cluster_spec.sync_node -> a real `scontrol reconfigure` (once); then the
           original file synced back (a second reconfigure)
        -> an agent whose slurm.conf names a dead SlurmctldPort: the unreachable-controller path, with the shared
           controller left running
    Teardown (always): agents stopped, every job submitted here cancelled, the node resumed, the original conf
    back, both nodes idle again: tests/scheduler use the same cluster afterwards.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ddlc.monitor.slurm import SINFO, SQUEUE, SlurmCollector, count_jobs, count_nodes, node_state
from ddlc.scheduler.cluster_spec import node_files, sync_node
from tests.monitor.helpers import collected
from tests.support import free_port

DATA = Path(__file__).parent / "data"


def _ok(proc: subprocess.CompletedProcess, cluster) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}: {proc.stdout[-1000:]}{proc.stderr[-1000:]}\n{cluster.logs()}"
    return proc


def _start_agent(cluster, port: int, conf: Path, log: Path) -> subprocess.Popen:
    """`ddlc agent --slurm-metrics` in host a's namespace, reading `conf`."""
    return subprocess.Popen(cluster.hosts.in_head([sys.executable, "-m", "ddlc", "agent", "--port", str(port),
                                                   "--node", "head", "--slurm-metrics"]),
                            env=cluster.env(SLURM_CONF=str(conf)), stdout=log.open("w"), stderr=subprocess.STDOUT)


def _metrics(cluster, port: int, agent: subprocess.Popen, log: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        proc = cluster.run(["curl", "-fsS", "--max-time", "30", f"http://127.0.0.1:{port}/metrics"], timeout=60)
        if proc.returncode == 0:
            return proc.stdout
        if agent.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"agent on {port} gave no /metrics: {proc.stderr}\n{log.read_text()[-2000:]}")
        time.sleep(0.3)


def _kill_wait(config: str) -> list[list[str]]:
    return [line.split() for line in config.splitlines() if line.startswith("KillWait")]


def _assert_kill_wait(cluster, seconds: int) -> None:
    config = cluster.scontrol("show", "config").stdout
    assert _kill_wait(config) == [["KillWait", "=", str(seconds), "sec"]], config


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def live(slurm, tmp_path_factory):
    cluster = slurm
    base = tmp_path_factory.mktemp("slurm-metrics")
    drained = cluster.nodes[1]
    out: dict = {}
    jobs: list[str] = []
    agents: list[subprocess.Popen] = []
    # systemctl: a shim saying the daemon is active (no systemd here); scontrol is the real one, in host a.
    shim = base / "shim"
    shim.mkdir()
    (shim / "systemctl").write_text("#!/bin/sh\nexit 0\n")
    (shim / "systemctl").chmod(0o755)
    sync_env = cluster.env(PATH=f"{shim}:{cluster.env()['PATH']}")

    def in_head(argv) -> int:
        return subprocess.run(cluster.hosts.in_head(list(argv)), env=sync_env, capture_output=True,
                              timeout=120).returncode

    try:
        _ok(cluster.scontrol("update", f"nodename={drained}", "state=drain", "reason=ddlc-test"), cluster)
        cluster.wait_nodes("drain", [drained])
        for extra in (["--wrap", "sleep 300"], ["--wrap", "sleep 1"], ["--array=1-3", "--wrap", "sleep 1"]):
            proc = _ok(cluster.run(["sbatch", "--parsable", "--exclusive", "-N1", "-o", "/dev/null", *extra],
                                   timeout=60), cluster)
            jobs.append(proc.stdout.strip().split(";")[0])
        cluster.wait_job(jobs[0], {"RUNNING"})
        out["squeue"] = cluster.run(list(SQUEUE), timeout=60)
        out["sinfo"] = cluster.run(list(SINFO), timeout=60)

        port = free_port()
        agents.append(_start_agent(cluster, port, cluster.conf, base / "agent.log"))
        out["metrics"] = _metrics(cluster, port, agents[-1], base / "agent.log")

        # A changed KillWait through sync_node, twice: the second run finds nothing to do.
        changed = node_files(replace(cluster.spec, kill_wait_s=7), cluster.dir)
        out["sync"] = [[list(c) for c in sync_node(changed, role="worker", conf_dir=cluster.dir, run=in_head).commands]
                       for _ in range(2)]
        out["killwait"] = cluster.scontrol("show", "config").stdout

        # The unreachable controller: a copy of slurm.conf whose SlurmctldPort nobody listens on.
        dead = base / "slurm-dead.conf"
        text = cluster.conf.read_text()
        assert re.search(r"(?m)^SlurmctldPort=\d+$", text), text
        dead.write_text(re.sub(r"(?m)^SlurmctldPort=\d+$", f"SlurmctldPort={free_port()}", text))
        port = free_port()
        agents.append(_start_agent(cluster, port, dead, base / "agent-dead.log"))
        out["metrics-down"] = _metrics(cluster, port, agents[-1], base / "agent-dead.log", timeout=120)
        yield out
    finally:
        errors = []
        for agent in agents:
            _stop(agent)
        steps = [
            ("scancel", lambda: jobs and _ok(cluster.run(["scancel", *jobs], timeout=30), cluster)),
            ("resume", lambda: _ok(cluster.scontrol("update", f"nodename={drained}", "state=resume"), cluster)),
            ("restore conf", lambda: sync_node(node_files(cluster.spec, cluster.dir), role="worker",
                                               conf_dir=cluster.dir, run=in_head)),
            ("restored KillWait", lambda: _assert_kill_wait(cluster, cluster.spec.kill_wait_s)),
            ("idle", lambda: cluster.wait_nodes("idle", cluster.nodes, timeout=180)),
        ]
        for name, step in steps:
            try:
                step()
            except Exception as error:  # noqa: BLE001 (every step runs; the first failure is reported)
                errors.append(f"{name}: {error}")
        assert not errors, errors


def test_real_squeue_and_sinfo_output_is_counted(live):
    squeue, sinfo = live["squeue"], live["sinfo"]
    assert squeue.returncode == 0 and sinfo.returncode == 0, squeue.stderr + sinfo.stderr
    # One job running, one job and three array tasks waiting.
    assert count_jobs(squeue.stdout) == {"pending": 4, "running": 1, "other": 0}, squeue.stdout
    nodes = count_nodes(sinfo.stdout)
    assert nodes["allocated"] == 1 and nodes["drained"] == 1 and sum(nodes.values()) == 2, sinfo.stdout


def test_agent_exports_slurm_metrics_that_promtool_accepts(live, promtool):
    text = live["metrics"]
    assert 'ddlc_slurm_up{node="head"} 1.0' in text
    assert 'ddlc_slurm_queue_length{node="head"} 4.0' in text
    assert 'ddlc_slurm_jobs{node="head",state="running"} 1.0' in text
    assert 'ddlc_slurm_nodes{node="head",state="drained"} 1.0' in text
    assert 'ddlc_slurm_nodes{node="head",state="idle"} 0.0' in text  # every state, 0 when none
    slurm_only = "".join(line + "\n" for line in text.splitlines() if "ddlc_slurm_" in line)
    result = subprocess.run([promtool, "check", "metrics"], input=slurm_only, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stdout + result.stderr


def test_a_changed_file_reaches_the_running_controller_once(live):
    assert live["sync"] == [[["scontrol", "reconfigure"]], []]
    assert _kill_wait(live["killwait"]) == [["KillWait", "=", "7", "sec"]], live["killwait"]


def test_an_unreachable_controller_exports_only_up_0(live):
    text = live["metrics-down"]
    assert 'ddlc_slurm_up{node="head"} 0.0' in text
    assert "ddlc_slurm_jobs" not in text and "ddlc_slurm_nodes{" not in text
    assert "ddlc_agent_info{" in text  # the rest of the agent is unaffected


def test_recorded_output_matches_the_collector(tmp_path):
    """The files in tests/monitor/data are this test module's real output (the docs and CloudWatch tests read them)."""
    outputs = {SQUEUE: (DATA / "slurm-squeue.txt").read_text(), SINFO: (DATA / "slurm-sinfo.txt").read_text()}
    samples = {(name, labels): value for name, labels, value in
               ((s.name, tuple(sorted(s.labels.items())), s.value)
                for family in SlurmCollector("head", run=outputs.get).collect() for s in family.samples)}
    assert samples[("ddlc_slurm_queue_length", (("node", "head"),))] == 4
    assert samples[("ddlc_slurm_nodes", (("node", "head"), ("state", "drained")))] == 1
    assert {name for name, _ in collected(SlurmCollector("head", run=outputs.get))} == {
        "ddlc_slurm_up", "ddlc_slurm_jobs", "ddlc_slurm_queue_length", "ddlc_slurm_nodes"}


@pytest.mark.parametrize(("raw", "state"), [
    ("idle", "idle"), ("allocated", "allocated"), ("alloc", "allocated"), ("mixed", "mixed"), ("drained", "drained"),
    ("drained*", "drained"), ("draining", "draining"), ("drng", "draining"), ("down*", "down"), ("idle~", "idle"),
    ("mixed+drain", "mixed"), ("completing", "allocated"), ("unknown", "other"), ("maint", "other"), ("", "other"),
])
def test_node_states_lose_their_flags(raw, state):
    assert node_state(raw) == state


def test_sinfo_lists_a_node_once_per_partition_and_squeue_odd_states_are_other():
    assert count_nodes("node1|idle\nnode1|idle\nnode2|down*\ngarbage\n")["idle"] == 1
    assert count_jobs("RUNNING\nCOMPLETING\nSUSPENDED\n\n") == {"pending": 0, "running": 1, "other": 2}
