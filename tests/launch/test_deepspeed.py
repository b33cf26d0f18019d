"""DeepSpeed engine on CPU (gloo) through DeepSpeed's own launcher: ZeRO stages, train.py's --deepspeed forms,
checkpoints in ddlc's committed layout, resume, and DeepSpeed's own multi-node runner (pdsh) across two hosts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ddlc.runtime.metrics import read_metrics
from tests.launch.helpers import assert_identical_ranks, job_args
from tests.launch.hosts import SSH_PORT
from tests.support import (CONFIG, FAST, PYTHON, REPO, TRAIN_PY, assert_ok, child_env, free_port, torchrun)
from tests.support import run as support_run

pytest.importorskip("deepspeed")

WORKER = REPO / "tests" / "launch" / "params_worker.py"
DEEPSPEED = Path(PYTHON).parent / "deepspeed"
DS_CONFIG = REPO / "ds_config.json"
ENV = {"TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), "PYTHONPATH": str(REPO / "src")}
STEPS = 10


def run(cmd: list[str], cwd: Path, timeout: float = 420, **env: str) -> subprocess.CompletedProcess:
    # The session's first DeepSpeed job JIT-compiles its shm comm op (minutes on a loaded 2-core machine; every job
    # waits on that build's lock): 180 s was too short.
    return support_run(cmd, cwd, timeout, **env)


def deepspeed(*args: str) -> list[str]:
    return [str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(free_port()), *args]


def common(tmp: Path, name: str, *more: str) -> list[str]:
    return [*FAST, f"training.max_steps={STEPS}", f"monitoring.run_dir={tmp}", f"monitoring.run_name={name}",
            "monitoring.progress=plain", *more]


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory) -> dict:
    """The same job under torchrun + DDP: ZeRO must reach the same parameters."""
    tmp = tmp_path_factory.mktemp("ddp")
    proc = run(torchrun("--standalone", "--nproc_per_node=2", str(WORKER), str(tmp / "params"), str(CONFIG),
                        *common(tmp, "ddp", "checkpoint.enabled=false")), cwd=REPO, **ENV)
    assert_ok(proc)
    return torch.load(tmp / "params" / "rank0.pt")


def assert_close_to(reference: dict, out: Path) -> None:
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    assert ranks[0].keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"ranks disagree on {name}"
        torch.testing.assert_close(ranks[0][name], tensor, rtol=1e-4, atol=1e-5, msg=f"ZeRO drifted from DDP on {name}")


def export_checkpoint(uri: str, output: Path, *which: str, **env: str) -> dict:
    proc = run([PYTHON, "-m", "ddlc.cli.main", "checkpoints", "export", uri, *which, "-o", str(output)], cwd=REPO,
               **ENV, **env)
    assert_ok(proc)
    exported = torch.load(output, weights_only=True)
    # One count on the screen: DeepSpeed's own "N params" progress lines used to contradict "M tensors" (#13).
    assert " params " not in proc.stdout and f"exported {len(exported)} tensors" in proc.stdout, proc.stdout
    return exported


def assert_equal_weights(exported: dict, final: dict) -> None:
    assert exported.keys() == final.keys()
    for name, tensor in final.items():
        assert torch.equal(exported[name], tensor), f"exported {name} differs from the trained parameter"


@pytest.fixture(scope="module")
def s3(moto):
    pytest.importorskip("s3fs")
    moto.create_bucket("ds-checkpoints")  # this module's bucket on the session's moto server
    return moto


@dataclass
class Zero3Run:
    out: Path  # params_worker's rank<N>.pt
    uri: str
    s3_env: dict  # the moto endpoint's variables
    env: dict  # ENV, s3_env and TMPDIR
    scratch: Path  # TMPDIR: where each rank's S3 staging directory goes
    run_dir: Path
    summary: dict  # as the run left them, before any test resumes it
    metrics: list


@pytest.fixture(scope="module")
def zero3_run(s3, tmp_path_factory) -> Zero3Run:
    """ONE ZeRO-3 job (10 steps, ds_config.json, built under zero.Init by default, checkpoints every 5 steps to
    s3://), read by the stage-3 case of test_zero_stage_matches_ddp_and_exports and by the S3 export/resume test:
    each asserts its own behaviour on it instead of training its own ZeRO-3 run."""
    tmp = tmp_path_factory.mktemp("zero3")
    uri, scratch = "s3://ds-checkpoints/zero3", tmp / "tmp"
    scratch.mkdir()
    env = {**ENV, **s3.env, "TMPDIR": str(scratch)}
    args = common(tmp, "ds-s3", "distributed.strategy=deepspeed", f"distributed.deepspeed.config={DS_CONFIG}",
                  "distributed.deepspeed.zero_stage=3", f"checkpoint.uri={uri}", "checkpoint.interval_steps=5")
    assert_ok(run(deepspeed(str(WORKER), str(tmp / "params"), str(CONFIG), *args), cwd=REPO, **env))
    run_dir = tmp / "ds-s3"
    return Zero3Run(tmp / "params", uri, s3.env, env, scratch, run_dir,
                    json.loads((run_dir / "summary.json").read_text()), read_metrics(run_dir))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 3])
def test_zero_stage_matches_ddp_and_exports(stage, ddp_reference, tmp_path, request):
    """ZeRO reaches DDP's parameters; `ddlc checkpoints export` merges its partitions into exactly those."""
    if stage == 3:  # the shared ZeRO-3 job; its checkpoints are on s3://
        job = request.getfixturevalue("zero3_run")
        out, ckpt, env, summary, metrics = job.out, job.uri, job.s3_env, job.summary, job.metrics
    else:
        out, ckpt, env = tmp_path / "params", str(tmp_path / "ckpt"), {}
        proc = run(deepspeed(str(WORKER), str(out), str(CONFIG), *common(
            tmp_path, f"zero{stage}", "distributed.strategy=deepspeed", f"distributed.deepspeed.config={DS_CONFIG}",
            f"distributed.deepspeed.zero_stage={stage}", f"checkpoint.uri={ckpt}", "checkpoint.interval_steps=1000")),
            cwd=REPO, **ENV)
        assert_ok(proc)
        summary = json.loads((tmp_path / f"zero{stage}" / "summary.json").read_text())
        metrics = read_metrics(tmp_path / f"zero{stage}")
    assert_close_to(ddp_reference, out)
    assert summary["strategy"] == "deepspeed" and summary["world_size"] == 2 and summary["steps"] == STEPS
    assert summary["final_loss"] < summary["first_loss"]
    assert all(record["grad_norm"] > 0 for record in metrics)  # every stage reports it
    # The last step is always checkpointed (stages 0 and 1 checkpoint every 1000 steps); its merged fp32 weights are
    # the final parameters, bit for bit.
    exported = export_checkpoint(ckpt, tmp_path / "model.pt", str(STEPS), **env)
    assert_equal_weights(exported, torch.load(out / "rank0.pt"))


@pytest.mark.slow
def test_zero3_checkpoints_on_s3_export_and_resume(zero3_run, tmp_path):
    """ZeRO-3 to s3://: each rank stages locally and uploads; COMMIT last; export and resume read it back. The
    resume builds the model whole (zero_init=false) from partitions written by a zero.Init build: the two are
    interchangeable."""
    job = zero3_run
    proc = run([PYTHON, "-m", "ddlc.cli.main", "checkpoints", "verify", job.uri], cwd=REPO, **job.env)
    assert_ok(proc)
    assert "OK   step-00000005" in proc.stdout and "OK   step-00000010" in proc.stdout
    exported = export_checkpoint(job.uri, tmp_path / "model.pt", **job.s3_env)
    assert_equal_weights(exported, torch.load(job.out / "rank0.pt"))
    assert not list(job.scratch.glob("ddlc-deepspeed-*")), "staging directories left behind"

    args = common(job.run_dir.parent, "ds-s3", "distributed.strategy=deepspeed",
                  f"distributed.deepspeed.config={DS_CONFIG}", "distributed.deepspeed.zero_stage=3",
                  "distributed.deepspeed.zero_init=false", f"checkpoint.uri={job.uri}", "checkpoint.interval_steps=5",
                  f"training.max_steps={STEPS + 4}")
    assert_ok(run(deepspeed(str(WORKER), str(tmp_path / "resumed"), str(CONFIG), *args), cwd=REPO, **job.env))
    summary = json.loads((job.run_dir / "summary.json").read_text())
    assert summary["start_step"] == STEPS and summary["steps"] == STEPS + 4
    assert summary["resumed_from"] == f"{job.uri}/step-{STEPS:08d}"
    assert not list(job.scratch.glob("ddlc-deepspeed-*")), "staging directories left behind"


@pytest.mark.slow
def test_failed_s3_upload_is_never_committed(s3, tmp_path):
    """Every rank's upload fails (the bucket is gone by the time of the save): no rank commits, each says why, and
    training still finishes. (A bucket missing from the start stops the job before step 1: see the next test.)"""
    import threading

    import boto3

    s3.create_bucket("vanishing")
    uri = "s3://vanishing/zero2"
    args = common(tmp_path, "ds-s3-fail", "distributed.strategy=deepspeed", "distributed.deepspeed.zero_stage=2",
                  f"checkpoint.uri={uri}", "training.max_steps=30", "checkpoint.interval_steps=30")
    proc = subprocess.Popen(deepspeed(str(WORKER), str(tmp_path / "params"), str(CONFIG), *args), cwd=REPO,
                            env=child_env(**ENV, **s3.env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "step 1/30" in line:  # the start-up probe has come and gone: now take the bucket away
                client.delete_bucket(Bucket="vanishing")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=300)
    finally:
        proc.kill()
    reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 0, output[-3000:]
    for rank in (0, 1):
        assert f"step-00000030 could not be written: rank {rank}: " in output, output[-3000:]
    assert f"{uri}/step-00000030 was not committed: RuntimeError: rank 0: " in output
    assert json.loads((tmp_path / "ds-s3-fail" / "summary.json").read_text())["steps"] == 30


def test_missing_bucket_stops_before_training(s3, tmp_path):
    uri = "s3://no-such-bucket/zero2"
    args = common(tmp_path, "ds-s3-missing", "distributed.strategy=deepspeed", f"checkpoint.uri={uri}")
    proc = run(deepspeed(str(TRAIN_PY), "--config", str(CONFIG), *args), cwd=REPO, **ENV, **s3.env)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert f"error: checkpoint location {uri}: rank 0 cannot write there (" in output, output[-3000:]
    assert "step 1/" not in output and not (tmp_path / "ds-s3-missing" / "summary.json").exists()


@pytest.mark.slow
def test_train_py_deepspeed_checkpoints_and_resume(tmp_path):
    """`deepspeed train.py --config config.yaml --deepspeed ds_config.json` (ZeRO 2 from the JSON), then resume."""
    ckpt = tmp_path / "ckpt"
    args = [str(TRAIN_PY), "--config", str(CONFIG), "--deepspeed", str(DS_CONFIG), *common(
        tmp_path, "ds", f"checkpoint.uri={ckpt}", "checkpoint.interval_steps=5")]
    command = deepspeed(*args)
    first = run(command, cwd=REPO, **ENV)
    assert_ok(first)
    # DeepSpeed's CPU all-reduce buffers (one ~69 MB /dev/shm file per rank) do not outlive the run.
    port = command[command.index("--master_port") + 1]
    assert "deepspeed_shm_comm_op built successfully" in first.stdout + first.stderr, "not DeepSpeed's shm all-reduce path"
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))
    proc = run([PYTHON, "-m", "ddlc.cli.main", "checkpoints", "verify", str(ckpt)], cwd=REPO, **ENV)
    assert_ok(proc)
    assert "step-00000005" in proc.stdout + proc.stderr and "step-00000010" in proc.stdout + proc.stderr
    state = json.loads((ckpt / "step-00000010" / "trainer_state.json").read_text())
    assert state["engine"] == "deepspeed" and state["zero_stage"] == 2 and state["step"] == 10
    assert (ckpt / "latest").read_text().strip() == "step-00000010"

    # DeepSpeed's own convention, 5 more steps: resumes from step 10 with the optimizer state it saved.
    resumed = run(deepspeed(str(TRAIN_PY), "--config", str(CONFIG), "--deepspeed", "--deepspeed_config",
                            str(DS_CONFIG), *[a.replace(f"max_steps={STEPS}", "max_steps=15") for a in args[5:]]),
                  cwd=REPO, **ENV)
    assert_ok(resumed)
    summary = json.loads((tmp_path / "ds" / "summary.json").read_text())
    assert summary["start_step"] == 10 and summary["steps"] == 15
    assert summary["resumed_from"].endswith("step-00000010")

    # Another ZeRO stage cannot read these shards: refused with one line naming both stages, nothing trained or
    # written, the checkpoints as they were.
    before = sorted(p.name for p in ckpt.iterdir())
    other = run(deepspeed(*args[:5], *[a.replace(f"max_steps={STEPS}", "max_steps=20") for a in args[5:]],
                          "distributed.deepspeed.zero_stage=3"), cwd=REPO, **ENV)
    output = other.stdout + other.stderr
    assert other.returncode != 0, output[-3000:]
    assert (f"checkpoint {ckpt}/step-00000015 holds ZeRO stage 2 shards but distributed.deepspeed.zero_stage is 3; "
            "resume with the same stage") in output, output[-3000:]
    assert "Traceback" not in output and "step 16/" not in output, output[-3000:]
    assert sorted(p.name for p in ckpt.iterdir()) == before
    assert (ckpt / "latest").read_text().strip() == "step-00000015"



@pytest.mark.slow
def test_deepspeed_runner_pdsh_two_hosts(hosts, tmp_path):
    """`deepspeed --hostfile hostfile train.py ...`: DeepSpeed's own runner starts both nodes through pdsh.

    Set up the way a user would on a cluster: pdsh's ssh gets the key and options from PDSH_SSH_ARGS_APPEND, and
    the variables the nodes need go in a `.deepspeed_env` file (here named by DS_ENV_FILE). DeepSpeed's own
    reachability check and master-address lookup run a plain `ssh host` that cannot see that key, hence
    --no_ssh_check and --master_addr (not needed where ~/.ssh/config already reaches the nodes).
    """
    if shutil.which("pdsh") is None:
        pytest.skip("pdsh not installed (make sysdeps)")
    env_file = tmp_path / "deepspeed_env"
    env_file.write_text(f"GLOO_SOCKET_IFNAME={hosts.nic}\nOMP_NUM_THREADS=1\n"
                        f"TORCH_EXTENSIONS_DIR={ENV['TORCH_EXTENSIONS_DIR']}\n")
    out = tmp_path / "params"
    argv = hosts.in_head([str(DEEPSPEED), "--hostfile", str(hosts.hostfile()), "--ssh_port", str(SSH_PORT),
                          "--no_ssh_check", "--master_addr", hosts.addresses[0], "--master_port", str(free_port()),
                          str(WORKER), *job_args(out, tmp_path, "ds-pdsh", 6, "distributed.strategy=deepspeed",
                                                 "distributed.deepspeed.zero_stage=3", "checkpoint.enabled=false")])
    ssh_options = f"-i {hosts.key} -o BatchMode=yes -o LogLevel=ERROR -o StrictHostKeyChecking=no " \
                  "-o UserKnownHostsFile=/dev/null"
    # PYTHONPATH needs no file: the runner exports every PYTHON* variable of this shell to the nodes itself.
    env = child_env(PYTHONPATH=ENV["PYTHONPATH"], DS_ENV_FILE=str(env_file), PDSH_SSH_ARGS_APPEND=ssh_options)
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert_ok(proc)
    output = proc.stdout + proc.stderr
    assert "cmd = pdsh " in output and f"export GLOO_SOCKET_IFNAME={hosts.nic};" in output
    for rank, address in enumerate(hosts.addresses[:2]):  # pdsh prefixes each node's lines with its name
        assert f"{address}: " in output and f"node_rank={rank}" in output
    assert_identical_ranks(out, 2)
    summary = json.loads((tmp_path / "ds-pdsh" / "summary.json").read_text())
    assert summary["strategy"] == "deepspeed" and summary["world_size"] == 2
    assert summary["final_loss"] < summary["first_loss"]


def test_plain_python_runs_deepspeed_as_one_process(tmp_path):
    """README's one-process form, `python train.py --config config.yaml`, with strategy=deepspeed: DeepSpeed asserts
    LOCAL_RANK, which only launchers set; ddlc sets it from its own 1-rank group instead of a traceback (ZeRO 2,
    the default: ZeRO-3's zero.Init path set it already)."""
    proc = run([PYTHON, str(TRAIN_PY), "--config", str(CONFIG), "distributed.strategy=deepspeed", *common(tmp_path, "one", "checkpoint.enabled=false",
                                                              "training.max_steps=2")], cwd=REPO, **ENV)
    assert_ok(proc)
    assert "step 2/2" in proc.stdout


def _hold(path: Path, how: str) -> subprocess.Popen:
    """A live process that keeps `path` open (as DeepSpeed's creator does) or only mapped (as its peers do)."""
    code = ("import mmap, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "m = mmap.mmap(fd, 4096) if sys.argv[2] == 'mapped' else None\n"
            "if m is not None: os.close(fd)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")
    holder = subprocess.Popen([PYTHON, "-c", code, str(path), how], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    return holder


def test_stale_shm_buffers_are_swept_and_live_ones_kept():
    """A rank killed while a DeepSpeed job starts (before every peer mapped its buffer) leaves ~69 MB files in
    /dev/shm; the next DeepSpeed job's local rank 0 removes this user's buffers that no process holds open or
    mapped and that are older than SHM_STALE_AFTER_S. Real files, real holder processes."""
    from ddlc.runtime.engines.deepspeed_engine import SHM_STALE_AFTER_S, sweep_stale_shm_buffers

    tag = f"test{os.getpid()}"
    paths = {kind: Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{tag}_{kind}"
             for kind in ("stale", "open", "mapped", "fresh")}
    for kind, path in paths.items():
        path.write_bytes(b"\0" * 4096)
        if kind != "fresh":
            old = path.stat().st_mtime - SHM_STALE_AFTER_S - 60
            os.utime(path, (old, old))
    holders = [_hold(paths["open"], "open"), _hold(paths["mapped"], "mapped")]
    try:
        removed = sweep_stale_shm_buffers()
        assert paths["stale"].name in removed and not paths["stale"].exists()
        for kind in ("open", "mapped", "fresh"):
            assert paths[kind].exists(), kind
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        for path in paths.values():
            path.unlink(missing_ok=True)
