"""Slurm metrics (ddlc.monitor.slurm) from a real slurmctld and slurmd on this machine.

    test (root) ── unshare --pid --fork --mount-proc --kill-child ──> driver.sh (its PID 1: when it ends, or the
    test is killed, the kernel ends munged, slurmctld, slurmd and every job step, whatever state they are in)
        munged on its own socket and key; slurm.conf from render_slurm_conf (linuxproc, SlurmUser=root, free ports,
        paths under the test's directory): node1 served by a slurmd, node2 never started and drained
        sbatch: one job running on node1, one pending, a 3-task array pending
        -> the exact squeue/sinfo commands the collector runs (raw output), `ddlc agent --slurm-metrics`'s
           /metrics; slurm.conf changed through cluster_spec.sync_node -> a real `scontrol reconfigure` (once);
           then slurmctld stopped -> the agent's /metrics again
    Skipped cleanly where Slurm, munge or root are missing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ddlc.monitor.slurm import SINFO, SQUEUE, SlurmCollector, count_jobs, count_nodes, node_state
from tests.monitor.helpers import collected
from tests.support import free_port

DATA = Path(__file__).parent / "data"
NEEDED = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo", "scontrol", "unshare", "curl")

CONF = r"""
import json, pathlib, socket, sys
from ddlc.scheduler.cluster_spec import SRUN_PORT_RANGE, node_files, sync_node
from ddlc.scheduler.slurm_conf import ClusterSpec, SlurmNode, render_cgroup_conf, render_slurm_conf
base, ctld, slurmd, kill_wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
spec = ClusterSpec(
    cluster_name="ddlcmetrics", controller=socket.gethostname().split(".")[0], controller_address="127.0.0.1",
    nodes=(SlurmNode("node1", "127.0.0.1", cpus=1), SlurmNode("node2", "127.0.0.2", cpus=1)),
    slurm_user="root", state_dir=f"{base}/state", spool_dir=f"{base}/spool/%n", log_dir=f"{base}/log",
    run_dir=f"{base}/run", munge_socket=f"{base}/munge/munge.sock", health_check_program=None,
    process_tracking="linuxproc", slurmctld_port=ctld, slurmd_port=slurmd, kill_wait_s=kill_wait,
    extra_lines=(f"SrunPortRange={SRUN_PORT_RANGE[0]}-{SRUN_PORT_RANGE[1]}",))  # as the cluster's conf has it
if sys.argv[5] == "write":
    open(f"{base}/slurm.conf", "w").write(render_slurm_conf(spec))
    open(f"{base}/cgroup.conf", "w").write(render_cgroup_conf(spec))
else:  # what `ddlc cluster slurm-conf` does on a node, twice, with the real scontrol
    files = node_files(spec, pathlib.Path(base))
    runs = [sync_node(files, role="worker", conf_dir=pathlib.Path(base)) for _ in range(2)]
    print(json.dumps([[list(c) for c in r.commands] for r in runs]))
"""

DRIVER = r"""
set -u
B={base}
mkdir -p $B/munge $B/state $B/spool $B/log $B/run $B/out
chmod 700 $B/munge
head -c 64 /dev/urandom > $B/munge/munge.key; chmod 400 $B/munge/munge.key
munged --socket=$B/munge/munge.sock --key-file=$B/munge/munge.key --pid-file=$B/munge/munged.pid \
    --log-file=$B/munge/munged.log --seed-file=$B/munge/seed --force || exit 10
{python} $B/conf.py $B {ctld_port} {slurmd_port} 2 write || exit 11
export SLURM_CONF=$B/slurm.conf
slurmctld -D -i -f $SLURM_CONF > $B/log/slurmctld.out 2>&1 &
for i in $(seq 1 100); do scontrol ping > /dev/null 2>&1 && break; sleep 0.2; done
slurmd -D -f $SLURM_CONF -N node1 > $B/log/slurmd.out 2>&1 &
for i in $(seq 1 150); do sinfo --noheader --Node --format='%N|%T' 2>/dev/null | grep -q '^node1|idle' && break; sleep 0.2; done
scontrol update nodename=node2 state=drain reason=ddlc-test || exit 12
sbatch --exclusive -N1 --wrap "sleep 120" -o /dev/null || exit 13
sbatch --exclusive -N1 --wrap "sleep 1" -o /dev/null || exit 13
sbatch --exclusive -N1 --array=1-3 --wrap "sleep 1" -o /dev/null || exit 13
for i in $(seq 1 150); do squeue --noheader --format=%T 2>/dev/null | grep -q RUNNING && break; sleep 0.2; done
{squeue} > $B/out/squeue.txt 2> $B/out/squeue.err; echo $? > $B/out/squeue.rc
{sinfo} > $B/out/sinfo.txt 2> $B/out/sinfo.err; echo $? > $B/out/sinfo.rc
{python} -m ddlc agent --port {agent_port} --node head --slurm-metrics > $B/log/agent.out 2>&1 &
for i in $(seq 1 150); do curl -fsS http://127.0.0.1:{agent_port}/metrics > $B/out/metrics.txt 2>/dev/null && break; sleep 0.2; done
# A changed KillWait through sync_node: a real `scontrol reconfigure` (systemctl: a shim saying slurmd is active).
mkdir -p $B/shim && printf '#!/bin/sh\nexit 0\n' > $B/shim/systemctl && chmod 755 $B/shim/systemctl
PATH=$B/shim:$PATH {python} $B/conf.py $B {ctld_port} {slurmd_port} 7 sync > $B/out/sync.json 2> $B/out/sync.err
scontrol show config 2>&1 | grep '^KillWait' > $B/out/killwait.txt
scontrol shutdown slurmctld > /dev/null 2>&1
for i in $(seq 1 100); do scontrol ping > /dev/null 2>&1 || break; sleep 0.2; done
sleep 0.6  # past the agent's shared-scrape window
curl -fsS http://127.0.0.1:{agent_port}/metrics > $B/out/metrics-down.txt
exit 0
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    missing = [tool for tool in NEEDED if not shutil.which(tool)]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(NEEDED)} (missing: {', '.join(missing) or 'root'})")
    base = tmp_path_factory.mktemp("slurm")
    base.chmod(0o755)
    (base / "conf.py").write_text(CONF)
    (base / "driver.sh").write_text(DRIVER.format(
        base=base, python=sys.executable, ctld_port=free_port(), slurmd_port=free_port(), agent_port=free_port(),
        squeue=shlex.join(SQUEUE), sinfo=shlex.join(SINFO),
    ))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "bash",
                             str(base / "driver.sh")], capture_output=True, text=True, timeout=300, env=env)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((base / "log").glob("*")) if p.is_file())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + logs
    return {"out": base / "out", "logs": logs}


def test_real_squeue_and_sinfo_output_is_counted(live):
    out = live["out"]
    assert (out / "squeue.rc").read_text().strip() == "0", (out / "squeue.err").read_text() + live["logs"]
    # One job running, one job and three array tasks waiting.
    assert count_jobs((out / "squeue.txt").read_text()) == {"pending": 4, "running": 1, "other": 0}
    nodes = count_nodes((out / "sinfo.txt").read_text())
    assert nodes["allocated"] == 1 and nodes["drained"] == 1 and sum(nodes.values()) == 2, (out / "sinfo.txt").read_text()


def test_agent_exports_slurm_metrics_that_promtool_accepts(live, promtool):
    text = (live["out"] / "metrics.txt").read_text()
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
    out = live["out"]
    runs = json.loads((out / "sync.json").read_text() or "null")
    assert runs == [[["scontrol", "reconfigure"]], []], (out / "sync.err").read_text()
    assert (out / "killwait.txt").read_text().split() == ["KillWait", "=", "7", "sec"]


def test_a_stopped_controller_exports_only_up_0(live):
    text = (live["out"] / "metrics-down.txt").read_text()
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
