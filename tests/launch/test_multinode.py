"""`ddlc launch` across two real hosts (network namespaces with their own sshd), plus its error paths."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from ddlc.launch.env import node_environment, parse_env_overrides
from ddlc.launch.multinode import SSH, expand_nodelist, parse_hostfile_text, slurm_hosts
from ddlc.errors import UserError
from tests.launch.helpers import DDLC, assert_identical_ranks, assert_trained, job_args, launch_on
from tests.support import REPO, assert_ok, run


def ddlc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return run([*DDLC, *args], cwd=REPO, timeout=timeout)


# -- hostfiles and plans (no network) ---------------------------------------------------------------------------
def test_hostfile_formats():
    hosts = parse_hostfile_text("# cluster\nnode-1 slots=8\nnode-2:4\n\n10.0.0.7  # bare\n", "hf")
    assert [(h.name, h.slots) for h in hosts] == [("node-1", 8), ("node-2", 4), ("10.0.0.7", 1)]
    assert hosts[1].origin == "hf:3"


@pytest.mark.parametrize(
    "text, message",
    [
        ("a slots=2\nb slots=two\n", "hf:2: slots must be a positive integer"),
        ("a slots=2\nb slots=0\n", "hf:2: slots must be a positive integer, got 'b slots=0'"),
        ("a:0\n", "hf:1: slots must be a positive integer, got 'a:0'"),
        ("a slots=-1\n", "hf:1: slots must be a positive integer"),
        ("a slots=2\nb gpus=2\n", "hf:2: expected 'host slots=N'"),
        ("a\na\n", "hf:2: host 'a' is listed twice"),
        ("bad/host\n", "hf:1: 'bad/host' is not a host name"),
        ("# nothing\n", "hf: no hosts listed"),
    ],
)
def test_malformed_hostfile_names_the_line(text, message):
    with pytest.raises(UserError, match=message):
        parse_hostfile_text(text, "hf")


def test_slurm_nodelist():
    assert expand_nodelist("gpu-[01-03,7],login") == ["gpu-01", "gpu-02", "gpu-03", "gpu-7", "login"]
    hosts = slurm_hosts({"SLURM_JOB_NODELIST": "p5-[1-2]", "SLURM_NTASKS_PER_NODE": "8(x2)"})
    assert [(h.name, h.slots) for h in hosts] == [("p5-1", 8), ("p5-2", 8)]


def test_env_profile_and_overrides():
    env = node_environment("aws-efa", parse_env_overrides(["NCCL_DEBUG=INFO", "FI_EFA_USE_DEVICE_RDMA="]),
                           {"NCCL_SOCKET_IFNAME": "ens5", "HOME": "/root"})
    assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_HUGE_PAGE"] == "0"
    assert env["NCCL_SOCKET_IFNAME"] == "ens5"  # the caller's shell beats the profile
    assert env["NCCL_DEBUG"] == "INFO" and "FI_EFA_USE_DEVICE_RDMA" not in env and "HOME" not in env
    assert node_environment("none") == {}


def test_ssh_options_from_the_user_override_ddlc_defaults():
    """ssh keeps the first value of each option: `--ssh-option ConnectTimeout=3` must beat ddlc's default of 10.
    `ssh -G` prints the configuration the real client would use, without connecting anywhere."""
    ssh = SSH(options=("ConnectTimeout=3", "ServerAliveCountMax=7", "BatchMode=no"), alive_timeout_s=45, port=2222)
    argv = ssh.argv("node-a")
    assert argv[-2:] == ["node-a", "--"]
    effective = subprocess.run([argv[0], "-G", *argv[1:-1]], capture_output=True, text=True, check=True,
                               env={**os.environ, "HOME": "/nonexistent"}).stdout.split("\n")
    assert {"connecttimeout 3", "serveralivecountmax 7", "batchmode no", "port 2222",
            "serveraliveinterval 15"} <= set(effective)
    # Without user options, ddlc's own defaults hold.
    argv = SSH(alive_timeout_s=45).argv("node-a")
    defaults = set(subprocess.run([argv[0], "-G", *argv[1:-1]], capture_output=True, text=True, check=True).stdout.split("\n"))
    assert {"connecttimeout 10", "serveralivecountmax 3", "batchmode yes"} <= defaults


BAD_SSH_OPTIONS = ["", "=3", "ConnectTimeout", "ConnectTimeout=", "ConnectTimeout 3", "-oProxyCommand=x",
                   "ConnectTimeout=3\nProxyCommand=touch /tmp/x", "Connect\x01Timeout=3", "NoSuchKeyword=1",
                   "ConnectTimeout=abc", "BatchMode=maybe", "ConnectTimeout=3 -oProxyCommand=x"]


def test_bad_ssh_options_are_one_line_errors(tmp_path):
    """A `--ssh-option` that is not one KEY=VALUE ssh accepts is refused before anything starts (exit 2, one line
    naming it), rather than every node's ssh failing later; a newline cannot smuggle in a second config line.
    Options ssh accepts, spaces in the value included, still go through first."""
    from ddlc.launch.multinode import checked_ssh_options

    for option in BAD_SSH_OPTIONS:
        with pytest.raises(UserError, match="--ssh-option"):
            checked_ssh_options([option])
    good = ("connecttimeout=3", "ProxyCommand=nc %h %p", "StrictHostKeyChecking=accept-new", "BatchMode=no")
    assert checked_ssh_options(good) == good
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a\nnode-b\n")
    base = ("launch", "--hostfile", str(hostfile), "--dry-run", "--master-port", "29511")
    proc = ddlc(*base, "--ssh-option", "ConnectTimeout=3\nProxyCommand=touch /tmp/x", "train.py", "--", "--config",
                "config.yaml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--ssh-option" in proc.stderr and not proc.stdout
    proc = ddlc(*base, "--ssh-option", "ProxyCommand=nc %h %p", "train.py", "--", "--config", "config.yaml")
    assert_ok(proc)
    assert "ssh -o 'ProxyCommand=nc %h %p' -o BatchMode=yes" in proc.stdout


def test_dry_run_prints_every_node_command(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a slots=4\nnode-b slots=4\n")
    proc = ddlc("launch", "--engine", "deepspeed", "--hostfile", str(hostfile), "--master-port", "29511",
                "--nproc-per-node", "2", "--dry-run", "train.py", "--", "--config", "config.yaml",
                "training.micro_batch_size=4")  # global batch 16 over 4 workers (checked before planning)
    assert_ok(proc)
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("# engine=deepspeed nodes=2 world_size=4 master=node-a:29511")
    for rank, (line, host) in enumerate(zip(lines[1:], ("node-a", "node-b"))):
        assert line.startswith(f"[{host}] ssh ") and f" {host} -- " in line
        assert "deepspeed.launcher.launch" in line and f"--node_rank={rank}" in line and "FI_PROVIDER=efa" in line
        assert "train.py --config config.yaml" in line
    # torchrun is elastic: a c10d rendezvous on a store this machine hosts, no fixed node ranks.
    proc = ddlc("launch", "--hostfile", str(hostfile), "--master-addr", "10.0.0.9", "--master-port", "29511",
                "--nproc-per-node", "2", "--min-nodes", "1", "--max-restarts", "5", "--job-id", "gpt-1", "--dry-run",
                "train.py", "--", "--config", "config.yaml", "training.micro_batch_size=4")
    assert_ok(proc)
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == ("# engine=torchrun nodes=2 (min 1, max 2) rendezvous=10.0.0.9:29511 (this machine) job=gpt-1 "
                        "max_restarts=5")
    for line, host in zip(lines[1:], ("node-a", "node-b")):
        assert line.startswith(f"[{host}] ssh ") and "ddlc.launch.torchrun_agent --nnodes=1:2 --nproc_per_node=2" in line
        assert "--rdzv-backend=c10d --rdzv-endpoint=10.0.0.9:29511 --rdzv-id=gpt-1 --rdzv-conf=is_host=false," in line
        assert f"--max-restarts=5" in line and f"--local-addr={host}" in line and "--node_rank" not in line
        assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in line and "train.py --config config.yaml" in line
    proc = ddlc("launch", "--engine", "horovod", "--hostfile", str(hostfile), "--dry-run", "train.py")
    assert_ok(proc)
    assert "horovod.runner.launch --gloo -np 8 -H node-a:4,node-b:4" in proc.stdout


def test_bad_input_exits_2_naming_it(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a slots=4\nnode-b slots=-1\n")
    proc = ddlc("launch", "--hostfile", str(hostfile), "train.py")
    assert proc.returncode == 2 and f"{hostfile}:2: slots must be a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr
    hostfile.write_text("no-such-host.invalid slots=1\n")
    proc = ddlc("launch", "--hostfile", str(hostfile), "train.py")
    assert proc.returncode == 2, proc.stderr
    assert "host no-such-host.invalid (" in proc.stderr and "unreachable over ssh" in proc.stderr
    proc = ddlc("launch", "--engine", "mpi", "--hostfile", str(hostfile), "train.py")
    assert proc.returncode == 2 and "--engine 'mpi'" in proc.stderr
    proc = ddlc("launch", "--hostfile", str(tmp_path / "missing"), "train.py")
    assert proc.returncode == 2 and "no such file" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--min-nodes", "4"], "error: --min-nodes 4: more than the 3 hosts listed"),
    (["--min-nodes", "0"], "error: --min-nodes 0: must be at least 1"),
    (["--max-restarts", "-1"], "error: --max-restarts -1: must be 0 or more"),
    (["--min-nodes", "3", "--max-nodes", "2"], "error: --max-nodes 2: fewer than --min-nodes 3"),
    (["--engine", "deepspeed", "--min-nodes", "2"], "error: --min-nodes needs --engine torchrun: deepspeed jobs"),
    (["--job-id", "a b"], "error: --job-id 'a b': letters, digits"),
    (["--health-arg=--min-free-gb=lots"], "error: --health-arg --min-free-gb=lots: Invalid value for '--min-free-gb'"),
    (["--node-timeout", "0"], "error: --node-timeout 0: must be at least 1 second"),
])
def test_bad_elastic_options_exit_2_with_one_line(tmp_path, args, message):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a\nnode-b\nnode-c\n")
    proc = ddlc("launch", "--hostfile", str(hostfile), *args, "--dry-run", "train.py")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message), proc.stderr


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1"])
def test_loopback_names_are_this_machine(tmp_path, name):
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{name} slots=2\n")
    hosts = parse_hostfile_text(hostfile.read_text(), "hf")
    assert [(h.name, h.slots, h.is_local) for h in hosts] == [(name, 2, True)]
    proc = ddlc("launch", "--hostfile", str(hostfile), "--dry-run", "train.py")
    assert_ok(proc)
    assert f"[{name}] (local) bash -c" in proc.stdout and "ssh" not in proc.stdout.splitlines()[1]
    assert "rendezvous=127.0.0.1:" in proc.stdout


# -- two real hosts (fixture `hosts` in conftest.py) ----------------------------------------------------------
@pytest.mark.slow
def test_torchrun_two_hosts(hosts, tmp_path):
    out = tmp_path / "params"
    proc = launch_on(hosts, "torchrun", job_args(out, tmp_path, "two-hosts", 6))
    assert_ok(proc)
    assert "[10.213.0.1] " in proc.stdout and "[10.213.0.2] " in proc.stdout
    assert_identical_ranks(out, 2)
    assert_trained(tmp_path / "two-hosts", out, 6, 2)


@pytest.mark.slow
def test_missing_engine_on_a_host_exits_2(hosts, tmp_path):
    proc = launch_on(hosts, "deepspeed", ["x"], "--python", "/usr/bin/python3")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "engine deepspeed missing on host 10.213.0.1" in proc.stderr


def _job_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and "ddlc.cli.main" not in cmdline and "ssh " not in cmdline:
            found.append(proc)
    return found


def _wait_for_both_nodes(job: subprocess.Popen, marker: str) -> psutil.Process:
    """Block until both hosts run a worker; return node 1's torchrun agent."""
    deadline = time.monotonic() + 180
    while True:
        assert job.poll() is None, job.stdout.read()
        assert time.monotonic() < deadline, "the job never started on both hosts"
        running = [(p, p.info["cmdline"]) for p in _job_processes(marker)]
        agents = [p for p, argv in running if argv[1:3] == ["-m", "ddlc.launch.torchrun_agent"]
                  and "--local-addr=10.213.0.2" in argv]
        workers = [p for p, argv in running if "python" in Path(argv[0]).name
                   and "ddlc.launch.torchrun_agent" not in argv and any(a.endswith("params_worker.py") for a in argv)]
        if agents and len(workers) >= 2:
            return agents[0]
        time.sleep(0.2)


def _wait_for_line(job: subprocess.Popen, text: str) -> None:
    """Read the job's output until a line contains `text` (the lines read are echoed, as pytest keeps them)."""
    for line in job.stdout:
        print(line, end="")
        if text in line:
            return
    raise AssertionError(f"the job ended before printing {text!r}")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["node-dies", "ctrl-c", "sigterm"])
def test_stopping_leaves_no_orphans(hosts, tmp_path, how):
    """A node's launcher killed mid-job leaves fewer than --min-nodes (default: every host): the whole job stops with
    its code. Ctrl-C, or SIGTERM to `ddlc launch` (docs/launch.md), stops every node after the workers checkpoint:
    exit 75, reported as a preempted stop."""
    marker = f"{how}-{os.getpid()}"
    job = launch_on(hosts, "torchrun", job_args(tmp_path / "p", tmp_path, marker, 100000), wait=False)
    try:
        agent = _wait_for_both_nodes(job, marker)
        _wait_for_line(job, "step 1/")  # training under way: the workers handle SIGTERM by checkpointing
        if how == "node-dies":
            agent.send_signal(signal.SIGKILL)  # node 1's torchrun dies; its worker would be orphaned on that host
        else:  # `ip netns exec` execs the launcher: this is Ctrl-C (or a SIGTERM) on `ddlc launch` itself
            job.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGTERM)
        output, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    if how == "node-dies":
        assert job.returncode == 128 + signal.SIGKILL, output[-3000:]
        assert re.search(r"ddlc launch: node 10.213.0.2 lost at [0-9:]{8}: its processes were killed \(SIGKILL\)",
                         output), output[-3000:]
        assert "ddlc launch: 1 node left, fewer than --min-nodes 2; stopping the job" in output
    else:
        assert job.returncode == 75, output[-3000:]
        name = "SIGINT" if how == "ctrl-c" else "SIGTERM"
        assert f"ddlc launch: {name} at" in output and "stopping all nodes (the workers checkpoint first" in output
        assert re.search(r"ddlc launch: preempted: the job saved a checkpoint at step \d+ and stopped", output)
        assert "Traceback" not in output and "SignalException" not in output, output[-5000:]
    leftovers = _job_processes(marker)
    assert not leftovers, [p.cmdline() for p in leftovers]


@pytest.mark.slow
def test_deepspeed_zero3_two_hosts(hosts, tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "params"
    proc = launch_on(hosts, "deepspeed", job_args(out, tmp_path, "ds-two-hosts", 6, "distributed.strategy=deepspeed",
                                                  "distributed.deepspeed.zero_stage=3", "checkpoint.enabled=false"))
    assert_ok(proc)
    assert "[10.213.0.2] " in proc.stdout
    assert_identical_ranks(out, 2)
    summary = (tmp_path / "ds-two-hosts" / "summary.json").read_text()
    assert '"strategy": "deepspeed"' in summary
    assert_trained(tmp_path / "ds-two-hosts", out, 6, 2)
