"""The generated files without a cluster: slurm.conf / gres.conf (render_slurm_conf, render_gres_conf), the batch
script of `ddlc submit`, each node's torchrun command (ddlc.scheduler.step), and the small parsers. That slurmctld
and slurmd accept the generated slurm.conf is proven by the real cluster (test_slurm_jobs.py)."""

from __future__ import annotations

import subprocess

import pytest

from ddlc.errors import UserError
from ddlc.scheduler.client import elapsed_seconds
from ddlc.scheduler.drain import is_drained
from ddlc.scheduler.sbatch import JobRequest, parse_time, render_script
from ddlc.scheduler.slurm_conf import ClusterSpec, SlurmNode, render_gres_conf, render_slurm_conf
from ddlc.scheduler.step import rendezvous, torchrun_argv
from tests.support import CONFIG, PYTHON, REPO, TRAIN_PY, run


def gpu_spec(**extra) -> ClusterSpec:
    nodes = (SlurmNode("p5-1", "10.0.1.5", cpus=192, gpus=8, gpu_type="h100", sockets=2, cores_per_socket=48,
                       threads_per_core=2, real_memory_mb=1_900_000, gpu_files="/dev/nvidia[0-7]"),
             SlurmNode("p5-2", "10.0.1.6", cpus=192, gpus=8))
    return ClusterSpec("prod", "head", "10.0.0.10", nodes, **extra)


def conf_lines(text: str) -> dict[str, str]:
    return {line.split("=", 1)[0]: line.split("=", 1)[1] for line in text.splitlines()
            if "=" in line and not line.startswith(("#", "NodeName", "PartitionName"))}


def test_slurm_conf_for_gpu_nodes():
    text = render_slurm_conf(gpu_spec())
    keys = conf_lines(text)
    assert keys["SlurmctldHost"] == "head(10.0.0.10)" and keys["GresTypes"] == "gpu"
    assert keys["SelectType"] == "select/cons_tres" and keys["JobRequeue"] == "1" and keys["ReturnToService"] == "2"
    assert keys["HealthCheckProgram"] == "/usr/local/sbin/ddlc-slurm-health" and keys["KillWait"] == "120"
    assert keys["ProctrackType"] == "proctrack/cgroup"
    assert ("NodeName=p5-1 NodeAddr=10.0.1.5 CPUs=192 Sockets=2 CoresPerSocket=48 ThreadsPerCore=2 "
            "RealMemory=1900000 Gres=gpu:h100:8 State=UNKNOWN") in text.splitlines()
    assert "NodeName=p5-2 NodeAddr=10.0.1.6 CPUs=192 Gres=gpu:8 State=UNKNOWN" in text.splitlines()
    assert text.splitlines()[-1] == "PartitionName=gpu Nodes=p5-1,p5-2 Default=YES MaxTime=INFINITE State=UP"
    assert len(keys) == len([line for line in text.splitlines() if "=" in line and not line.startswith(
        ("#", "NodeName", "PartitionName"))]), "a setting appears twice"


def test_slurm_conf_without_gpus_or_health_check():
    spec = ClusterSpec("t", "c", "10.0.0.1", (SlurmNode("n1", "10.0.0.2", cpus=2),), health_check_program=None,
                       process_tracking="linuxproc", munge_socket="/tmp/m.sock")
    keys = conf_lines(render_slurm_conf(spec))
    assert "GresTypes" not in keys and "HealthCheckProgram" not in keys
    assert keys["ProctrackType"] == "proctrack/linuxproc" and keys["TaskPlugin"] == "task/none"
    assert keys["AuthInfo"] == "socket=/tmp/m.sock"


def test_gres_conf():
    assert render_gres_conf(gpu_spec()).splitlines()[1:] == [
        "NodeName=p5-1 Name=gpu Type=h100 File=/dev/nvidia[0-7]",
        "NodeName=p5-2 AutoDetect=nvml",
    ]
    cpu_only = ClusterSpec("t", "c", "10.0.0.1", (SlurmNode("n1", "10.0.0.2", cpus=2),))
    assert render_gres_conf(cpu_only).splitlines()[1:] == []


@pytest.mark.parametrize("bad, message", [
    (dict(cluster_name="bad name"), "slurm cluster_name 'bad name'"),
    (dict(nodes=()), "slurm cluster has no compute nodes"),
])
def test_cluster_spec_rejects_bad_input(bad, message):
    fields = dict(cluster_name="c", controller="h", controller_address="10.0.0.1",
                  nodes=(SlurmNode("n1", "10.0.0.2", cpus=1),))
    with pytest.raises(UserError, match=message):
        ClusterSpec(**{**fields, **bad})


# -- the batch script -------------------------------------------------------------------------------------------
def request(**extra) -> JobRequest:
    fields = dict(nodes=2, script="train.py", script_args=("--config", "c.yaml", "monitoring.run_name=r1"),
                  run_name="r1", output_dir="/shared/runs/r1", workdir="/shared", python="/opt/venv/bin/python")
    return JobRequest(**{**fields, **extra})


def test_batch_script_cpu_nodes():
    text = render_script(request(time="1:00:00", partition="cpu"))
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = [line for line in lines if line.startswith("#SBATCH")]
    assert sbatch == ["#SBATCH --job-name=r1", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                      "#SBATCH --exclusive", "#SBATCH --time=1:00:00", "#SBATCH --partition=cpu",
                      "#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --chdir=/shared",
                      "#SBATCH --output=/shared/runs/r1/slurm-%j.out", "#SBATCH --comment=ddlc:/shared/runs/r1"]
    assert lines[-1] == ("exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 /opt/venv/bin/python -m "
                         "ddlc.scheduler.step --nproc-per-node=1 --port-base=20000 -- train.py --config c.yaml "
                         "monitoring.run_name=r1")


def test_batch_script_gpu_nodes_and_quoting():
    text = render_script(request(gpus_per_node=8, script_args=("lr=1e-3", "name=a b;rm -rf /")))
    assert "#SBATCH --gpus-per-node=8" in text and "#SBATCH --exclusive" in text and "--time" not in text
    assert "--nproc-per-node=8" in text and "'name=a b;rm -rf /'" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0  # valid shell


@pytest.mark.parametrize("field, value", [("workdir", "/my project"), ("output_dir", "/runs/a\n#SBATCH --x"),
                                          ("output_dir", '/runs/"q"')])
def test_paths_sbatch_would_split_are_refused(field, value):
    with pytest.raises(UserError, match="cannot hold whitespace or quotes"):
        render_script(request(**{field: value}))


@pytest.mark.parametrize("value, seconds", [("90", 5400), ("1:30", 90), ("1:30:00", 5400), ("2-00", 172800),
                                            ("1-02:03", 93780), ("1-02:03:04", 93784), ("UNLIMITED", 0)])
def test_time_formats(value, seconds):
    assert parse_time(value) == seconds


@pytest.mark.parametrize("value", ["soon", "1h", "-5", "1:60", "1:00:60", "1-24:00", "0", "1::2", "",
                                   "99999999999999999999"])
def test_bad_time_formats(value):
    with pytest.raises(UserError, match="--time"):
        parse_time(value)


# -- each node's command ----------------------------------------------------------------------------------------
def test_step_rendezvous_on_the_first_node():
    env = {"SLURM_JOB_NODELIST": "gpu-[07-09]", "SLURM_JOB_ID": "123456", "SLURM_JOB_NUM_NODES": "3"}
    assert rendezvous(env, 20000) == ("gpu-07", 23456, "slurm-123456", 3)
    assert rendezvous({**env, "SLURM_JOB_ID": "29999"}, 20000)[1] == 29999  # below the ephemeral ports
    argv = torchrun_argv(env, 8, 20000, ["train.py", "--config", "c.yaml"])
    assert argv[:6] == ["--nnodes=3", "--nproc_per_node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu-07:23456",
                        "--rdzv-id=slurm-123456", "--max-restarts=0"]
    assert argv[6].startswith("--local-addr=") and argv[7:] == ["train.py", "--config", "c.yaml"]


def test_step_outside_slurm_exits_2():
    proc = run([PYTHON, "-m", "ddlc.scheduler.step", "--", "train.py"], cwd=REPO, SLURM_JOB_NODELIST="",
               SLURM_JOB_ID="")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ddlc.scheduler.step runs inside a Slurm job")


def test_dry_run_prints_the_script_with_the_pinned_run_name(tmp_path):
    proc = run([PYTHON, "-m", "ddlc.cli.main", "submit", "--nodes", "2", "--dry-run", str(TRAIN_PY), "--",
                "--config", str(CONFIG), "training.global_batch_size=16"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --nodes=2" in proc.stdout and "#SBATCH --requeue" in proc.stdout
    name = [line for line in proc.stdout.splitlines() if line.startswith("#SBATCH --job-name=")][0].split("=")[1]
    assert name.startswith("config-") and proc.stdout.rstrip().endswith(f"monitoring.run_name={name}")
    assert f"#SBATCH --output={tmp_path}/runs/{name}/slurm-%j.out" in proc.stdout
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    # A batch that does not divide over 3 workers is refused before anything is submitted.
    proc = run([PYTHON, "-m", "ddlc.cli.main", "submit", "--nodes", "3", "--dry-run", str(TRAIN_PY), "--",
                "--config", str(CONFIG), "training.global_batch_size=8", "training.micro_batch_size=4"], cwd=tmp_path)
    assert proc.returncode == 2 and "world size (3)" in proc.stderr and len(proc.stderr.splitlines()) == 1
    # A config that is not there: one line (the job's directory is where the nodes would read it too).
    proc = run([PYTHON, "-m", "ddlc.cli.main", "submit", "--nodes", "1", "--dry-run", str(TRAIN_PY), "--",
                "--config", "missing.yaml"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr == f"error: --config missing.yaml: no such file (in {tmp_path}, " \
        "the job's working directory)\n", proc.stderr
    # An extra #SBATCH option must be one word there (sbatch splits the line at whitespace).
    proc = run([PYTHON, "-m", "ddlc.cli.main", "submit", "--nodes", "1", "--sbatch=--account=a b", "--dry-run",
                str(TRAIN_PY)], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --sbatch '--account=a b': expected one long")


# -- parsers ----------------------------------------------------------------------------------------------------
def test_elapsed_and_drained_states():
    assert [elapsed_seconds(t) for t in ("0:05", "1:02:03", "2-01:00:00", "INVALID")] == [5, 3723, 176400, 0]
    assert is_drained("drained") and is_drained("draining") and is_drained("drained*") and is_drained("idle+drain")
    assert not is_drained("idle") and not is_drained("allocated") and not is_drained("down*")


def test_torchrun_under_srun_is_torchrun_not_a_direct_srun_launch():
    """Workers of a `ddlc submit` job see srun's variables (the task's) and torchrun's (the worker's): torchrun's
    describe the worker (rank, world, local rank), srun's only the agent's task."""
    from ddlc.runtime.distributed import detect_launch_env

    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NODELIST": "n[1-2]",
           "RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8", "TORCHELASTIC_RUN_ID": "slurm-5",
           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"}
    launch = detect_launch_env(env)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == \
        ("torchrun", 9, 16, 1, 8)
    assert launch.master_addr == "10.0.0.1" and launch.node_rank == 1


def test_cost_so_far_from_the_price_table(tmp_path, monkeypatch):
    from ddlc.scheduler.jobs import cost_so_far

    table = tmp_path / "prices.yaml"
    table.write_text("prices:\n  p4d.24xlarge: 30.0\n")
    monkeypatch.setenv("DDLC_PRICE_TABLE", str(table))
    assert cost_so_far("p4d.24xlarge", 2, "1:30:00") == pytest.approx(90.0)  # 30 $/h x 2 nodes x 1.5 h
    assert cost_so_far("no-such-type", 2, "1:00:00") is None and cost_so_far(None, 2, "1:00:00") is None
    table.write_text("not: [a table")
    assert cost_so_far("p4d.24xlarge", 2, "1:00:00") is None  # a broken table: '-', not a traceback


def test_jobs_row_survives_damaged_bookkeeping(tmp_path):
    """A torn or hand-edited slurm-jobs.json (kill -9 mid-write, a disk full) costs only the columns it fed."""
    from ddlc.scheduler.client import JobRow
    from ddlc.scheduler.jobs import view
    from ddlc.scheduler.submit import record_job

    row = JobRow("7", "slurm-name", "root", "RUNNING", 2, "1:00:00", "n[1-2]", "gpu", f"ddlc:{tmp_path}")
    (tmp_path / "slurm-jobs.json").write_bytes(b"\x00{not json")
    shown = view(row)
    assert (shown.run, shown.checkpoint_step, shown.cost_usd) == ("slurm-name", None, None)
    assert shown.cells()[5:7] == ["-", "-"]
    record_job(tmp_path, "7", {"run": "r1", "checkpoint_uri": str(tmp_path / "none"), "instance_type": "p4d.24xlarge"})
    shown = view(row)
    assert shown.run == "r1" and shown.checkpoint_step is None and shown.cost_usd > 0


@pytest.mark.parametrize("field,value", [
    ("slurm_user", "slurm\nAuthType=auth/none"), ("state_dir", "/var/spool/a b"), ("munge_socket", "/x\n/y"),
    ("max_time", "1:00\nJobRequeue=0"),
    ("health_check_program", "/bin/ok #"), ("extra_lines", ("KillWait=5\nAuthType=auth/none",)),
    ("partition", "DEFAULT"), ("partition", "gpu\n"), ("process_tracking", "bogus"), ("slurmd_port", 6817),
    ("slurmctld_port", 70000), ("kill_wait_s", -5),
])
def test_cluster_spec_refuses_values_that_would_add_or_break_conf_lines(field, value):
    """A value with a space or newline would end its `Key=value` and start another key (a second AuthType)."""
    fragment = {"extra_lines": "extra line", "slurmd_port": "ports", "slurmctld_port": "ports"}.get(field, field)
    with pytest.raises(UserError, match=fragment):
        ClusterSpec("c", "head", "10.0.0.1", (SlurmNode("n1", "10.0.0.2", 2),), **{field: value})
    with pytest.raises(UserError, match="controller_address"):
        ClusterSpec("c", "head", "10.0.0.1 SlurmUser=root", (SlurmNode("n1", "10.0.0.2", 2),))


@pytest.mark.parametrize("field,value", [("address", "10.0.0.2\nSlurmUser=root"), ("gpu_files", "/dev/nvidia0\nName=gpu File=/etc/shadow"),
                                         ("gpu_type", "a100 x")])
def test_cluster_spec_refuses_node_values_that_would_add_lines(field, value):
    node = {"name": "n1", "address": "10.0.0.2", "cpus": 2, "gpus": 1, **{field: value}}
    with pytest.raises(UserError, match=field):
        ClusterSpec("c", "head", "10.0.0.1", (SlurmNode(**node),))


@pytest.mark.parametrize("extra,fragment", [
    ({"partition": "gpu\n#SBATCH --uid=0"}, "--partition"), ({"partition": "g p"}, "--partition"),
    ({"time": " 5"}, "--time"), ({"time": "5 "}, "--time"),
    ({"extra_sbatch": ("--no-requeue",)}, "set by ddlc submit"), ({"extra_sbatch": ("--comment=x",)}, "set by ddlc"),
    ({"extra_sbatch": ("--output=/tmp/x",)}, "set by ddlc"), ({"extra_sbatch": ("--nodes=5",)}, "set by ddlc"),
    ({"extra_sbatch": ("--wrap=id",)}, "set by ddlc"), ({"extra_sbatch": ("--",)}, "one long sbatch option"),
])
def test_job_request_refuses_what_would_change_the_script_ddlc_relies_on(extra, fragment):
    """--no-requeue through --sbatch turned requeue off; --comment hid the run from `ddlc jobs`; a newline in
    --partition added an #SBATCH line of its own even in --dry-run."""
    with pytest.raises(UserError, match=fragment):
        request(**extra)
    assert "#SBATCH --account=ml" in render_script(request(extra_sbatch=("--account=ml",)))
