"""The GPU path's choices, proved on CPU wherever they have a CPU-observable effect (issue #21). What needs a GPU is
in scripts/gpu_check.sh."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from ddlc.config.loader import load_config
from ddlc.errors import UserError
from ddlc.infra.instance_types import GPU_INSTANCE_TYPES
from ddlc.launch.env import node_environment, shell_assignment
from ddlc.runtime.distributed import detect_launch_env
from ddlc.runtime.optim import adamw_implementation
from ddlc.runtime.precision import DeviceFacts, enable_tf32, resolve_precision
from ddlc.runtime.preemption import PreemptionWatcher
from ddlc.runtime.requirements import check_torch_version
from tests.support import CONFIG, FAST, REPO, TRAIN_PY, assert_ok, run, torchrun

# -- precision per instance type ----------------------------------------------------------------------------------

@pytest.mark.parametrize("instance_type", sorted(GPU_INSTANCE_TYPES))
def test_auto_precision_per_instance_type(instance_type):
    device = DeviceFacts.for_instance_type(instance_type)
    v100 = GPU_INSTANCE_TYPES[instance_type].gpu == "V100"
    assert resolve_precision("auto", device) == ("fp32" if v100 else "bf16")
    assert resolve_precision("fp32", device) == "fp32"  # an explicit choice stays


@pytest.mark.parametrize("instance_type", ["p3dn.24xlarge", "p3.2xlarge"])
def test_bf16_is_refused_on_v100_in_one_line(instance_type):
    with pytest.raises(UserError) as caught:
        resolve_precision("bf16", DeviceFacts.for_instance_type(instance_type))
    message = str(caught.value)
    assert "\n" not in message and "training.precision=bf16" in message and "V100" in message
    assert "compute capability 7.0" in message and "training.precision=fp32" in message


def test_cpu_auto_is_fp32_and_the_default_is_auto():
    assert resolve_precision("auto", DeviceFacts("cpu")) == "fp32"
    assert resolve_precision("bf16", DeviceFacts("cpu")) == "bf16"  # CPU autocast has bf16
    assert load_config(None, []).training.precision == "auto"
    assert load_config(CONFIG, []).training.precision == "auto"  # the shipped config is no longer fp32 on GPUs


def test_tf32_is_switched_on_for_cuda_only():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        assert enable_tf32(torch.device("cpu")) is False
        assert torch.get_float32_matmul_precision() == "highest"
        assert enable_tf32(torch.device("cuda", 0)) is True  # only sets math modes: no GPU needed to check them
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


# -- EFA / NCCL environment per instance type --------------------------------------------------------------------

def test_efa_profile_follows_the_instance_table():
    p4d = node_environment("aws-efa", instance_type="p4d.24xlarge")
    assert p4d["FI_EFA_USE_DEVICE_RDMA"] == "1" and p4d["FI_PROVIDER"] == "efa"
    assert p4d["LD_LIBRARY_PATH"].startswith("/opt/amazon/ofi-nccl/lib:")
    assert p4d["NCCL_DEBUG"] == "INFO" and p4d["NCCL_DEBUG_SUBSYS"] == "INIT,NET"
    assert p4d["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and "NCCL_ASYNC_ERROR_HANDLING" not in p4d
    p3dn = node_environment("aws-efa", instance_type="p3dn.24xlarge")
    assert "FI_EFA_USE_DEVICE_RDMA" not in p3dn and p3dn["FI_PROVIDER"] == "efa"  # EFA, but no GPUDirect RDMA
    g5 = node_environment("aws-efa", instance_type="g5.xlarge")
    assert not [k for k in g5 if k.startswith("FI_")] and "LD_LIBRARY_PATH" not in g5  # no EFA at all
    assert node_environment("aws-efa") == node_environment("aws-efa", instance_type=None)
    with pytest.raises(UserError, match="--instance-type: unsupported instance type 'p9.huge'"):
        node_environment("aws-efa", instance_type="p9.huge")


def test_ld_library_path_is_prepended_on_the_node():
    value = node_environment("aws-efa")["LD_LIBRARY_PATH"]
    line = f"env {shell_assignment('LD_LIBRARY_PATH', value)} printenv LD_LIBRARY_PATH"
    had = subprocess.run(["bash", "-c", line], env={"LD_LIBRARY_PATH": "/usr/local/cuda/lib64"},
                         capture_output=True, text=True).stdout.strip()
    assert had.startswith("/opt/amazon/ofi-nccl/lib:") and had.endswith(":/opt/amazon/efa/lib:/usr/local/cuda/lib64")
    empty = subprocess.run(["bash", "-c", line], env={}, capture_output=True, text=True).stdout.strip()
    assert empty.endswith("/opt/amazon/efa/lib")  # no dangling ':' (which would mean the current directory)


# -- torch floor, Horovod, DeepSpeed -----------------------------------------------------------------------------

def test_torch_floor_message():
    with pytest.raises(UserError) as caught:
        check_torch_version("2.6.0+cu124")
    assert "torch 2.6.0+cu124 is too old" in str(caught.value) and "torch>=2.9" in str(caught.value)
    for fine in ("2.9.0", "2.13.0+cpu", "3.0.1", "weird"):
        check_torch_version(fine)
    floor = [line for line in (REPO / "pyproject.toml").read_text().splitlines() if '"torch>=' in line]
    assert floor and '"torch>=2.9"' in floor[0]


def test_horovod_without_nccl_is_refused_for_cuda():
    hvd = pytest.importorskip("horovod.torch")
    from ddlc.runtime.engines.horovod_engine import require_nccl_for_cuda

    if hvd.nccl_built():
        pytest.skip("this Horovod has NCCL")
    require_nccl_for_cuda(hvd, torch.device("cpu"))  # CPU training with a gloo-only build is fine
    with pytest.raises(UserError) as caught:
        require_nccl_for_cuda(hvd, torch.device("cuda", 0))
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in str(caught.value) and "\n" not in str(caught.value)


def test_deepspeed_overlaps_communication_on_gpus_only(tmp_path):
    from ddlc.runtime.data import plan_batches
    from ddlc.runtime.engines.deepspeed_engine import deepspeed_config

    plan = plan_batches(4, 8, None, 2)
    shipped = load_config(None, [f"distributed.deepspeed.config={REPO / 'ds_config.json'}"])
    assert deepspeed_config(shipped, plan, "cuda")["zero_optimization"]["overlap_comm"] is True
    assert deepspeed_config(shipped, plan, "cpu")["zero_optimization"]["overlap_comm"] is False
    off = tmp_path / "ds.json"
    off.write_text(json.dumps({"zero_optimization": {"stage": 1, "overlap_comm": False}}))
    told = load_config(None, [f"distributed.deepspeed.config={off}"])
    assert deepspeed_config(told, plan, "cuda")["zero_optimization"]["overlap_comm"] is False


def test_deepspeed_bf16_at_zero_stage_0_still_measures_the_gradient_norm(tmp_path):
    pytest.importorskip("deepspeed")
    proc = run(torchrun("--standalone", "--nproc_per_node=2", str(TRAIN_PY), "--config", str(CONFIG), *FAST,
                        "training.max_steps=3", "training.log_interval=1", "distributed.strategy=deepspeed",
                        "distributed.deepspeed.zero_stage=0", "training.precision=bf16", "checkpoint.enabled=false",
                        f"monitoring.run_dir={tmp_path}", "monitoring.run_name=ds0", "monitoring.progress=plain"),
               cwd=tmp_path, timeout=400, TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
    assert_ok(proc)
    records = [json.loads(line) for line in (tmp_path / "ds0" / "metrics.jsonl").read_text().splitlines()]
    norms = [r["grad_norm"] for r in records if "grad_norm" in r]
    assert len(norms) == 3 and all(n > 0 for n in norms), norms


# -- launch environment, preemption, optimizer ---------------------------------------------------------------------

def test_local_rank_is_not_0_for_every_rank_when_the_launcher_sets_none():
    assert detect_launch_env({"RANK": "3", "WORLD_SIZE": "4"}).local_rank == 3
    assert detect_launch_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}).local_rank == 1
    assert detect_launch_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}).local_rank == 0  # as told
    assert detect_launch_env({"HOROVOD_RANK": "5", "HOROVOD_SIZE": "8", "HOROVOD_LOCAL_SIZE": "4"}).local_rank == 1
    assert detect_launch_env({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8"}).local_rank == 1


def test_preemption_agreement_is_spaced_out_at_scale():
    assert PreemptionWatcher(world_size=8, signals=()).every == 1
    watcher = PreemptionWatcher(world_size=1024, signals=())
    assert watcher.every == 16
    watcher.requested_by = 15
    answers = [watcher.should_stop() for _ in range(16)]
    assert answers == [False] * 15 + [True]  # every rank asks on the same steps, so the all-reduce pairs up


def test_adamw_is_foreach_on_cpu():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert adamw_implementation(params) == {"foreach": True}
    assert adamw_implementation([]) == {"foreach": True}
