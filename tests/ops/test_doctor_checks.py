"""Each doctor check, PASS and FAIL, against prepared /proc and /sys trees, real files, ports and processes."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest

from ddlc.ops import doctor
from ddlc.ops.doctor import HostFacts, SshRunner, Status, TorchFacts
from tests.ops.trees import (A100, env_with_path, executable, fi_info_bin, hugepages_proc, nvidia_proc, rdma_sys)
from tests.support import PYTHON, free_port

CUDA_TORCH = TorchFacts("2.13.0+cu124", "12.4", True, 8, True, "2.21.5")
CPU_TORCH = TorchFacts("2.13.0+cpu", None, False, 0, False, None)


# -- GPUs, driver, NCCL --------------------------------------------------------------------------------------

def test_gpus_pass_when_driver_and_torch_see_all(tmp_path):
    gpus = doctor.read_nvidia_gpus(nvidia_proc(tmp_path))
    result = doctor.check_gpus(gpus, CUDA_TORCH, expected=8, environ={})
    assert result.status is Status.PASS
    assert result.detail == f"8 x {A100}; torch sees all 8"


def test_gpus_fail_when_one_fell_off_the_bus(tmp_path):
    gpus = doctor.read_nvidia_gpus(nvidia_proc(tmp_path, gpus=7))
    result = doctor.check_gpus(gpus, CUDA_TORCH, expected=8, environ={})
    assert result.status is Status.FAIL and "8 expected" in result.detail
    assert result.doc == "docs/troubleshooting.md#gpus-missing-or-not-visible-to-pytorch"


def test_gpus_fail_with_a_cpu_only_torch(tmp_path):
    gpus = doctor.read_nvidia_gpus(nvidia_proc(tmp_path))
    result = doctor.check_gpus(gpus, CPU_TORCH, expected=None, environ={})
    assert result.status is Status.FAIL and "CPU-only build" in result.detail


def test_gpus_fail_when_torch_sees_fewer(tmp_path):
    gpus = doctor.read_nvidia_gpus(nvidia_proc(tmp_path))
    fewer = TorchFacts("2.13.0+cu124", "12.4", True, 4, True, None)
    assert doctor.check_gpus(gpus, fewer, None, {}).status is Status.FAIL
    assert doctor.check_gpus(gpus, fewer, None, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}).status is Status.WARN


def test_no_gpu_is_a_warning_unless_expected(tmp_path):
    assert doctor.read_nvidia_gpus(tmp_path) == []
    relaxed = doctor.check_gpus([], CPU_TORCH, expected=None, environ={})
    assert relaxed.status is Status.WARN and "no NVIDIA GPU" in relaxed.detail
    strict = doctor.check_gpus([], CPU_TORCH, expected=8, environ={})
    assert strict.status is Status.FAIL


def test_cluster_worker_expects_its_gpus_from_cluster_env(tmp_path):
    cluster_env = tmp_path / "cluster.env"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=8\n")
    cluster_env.write_text("DDLC_ROLE=worker\nDDLC_GPUS_PER_NODE=8\nDDLC_CHECKPOINT_BUCKET=ddlc-prod-ckpt\n"
                           f"DDLC_HOSTFILE={hostfile}\n")
    env = doctor.node_environment({"DDLC_ROLE": "worker"}, cluster_env)
    assert doctor._gpu_expectation(env, None) == 8
    options = doctor.DoctorOptions(environ={}, cluster_env_file=cluster_env)
    _, uri, found_hostfile, port = doctor.resolve_inputs(options)
    assert uri == "s3://ddlc-prod-ckpt/checkpoints" and port == 29500 and found_hostfile == hostfile
    explicit = doctor.DoctorOptions(environ={"MASTER_PORT": "23456"}, cluster_env_file=cluster_env,
                                    checkpoint_uri="/data/ckpt")
    assert doctor.resolve_inputs(explicit)[1:] == ("/data/ckpt", hostfile, 23456)


@pytest.mark.parametrize("open_module", [False, True])
def test_driver_version_is_read_from_both_module_flavours(tmp_path, open_module):
    nvidia_proc(tmp_path, driver="550.54.15", open_module=open_module)
    assert doctor.read_driver_version(tmp_path) == "550.54.15"


def test_driver_cuda_pass_warn_fail():
    assert doctor.check_driver_cuda("550.54.15", CUDA_TORCH, True).status is Status.PASS
    minor_compat = doctor.check_driver_cuda("535.104.05", CUDA_TORCH, True)
    assert minor_compat.status is Status.WARN and "minor-version compatibility" in minor_compat.detail
    too_old = doctor.check_driver_cuda("470.182.03", CUDA_TORCH, True)
    assert too_old.status is Status.FAIL and "525.60.13" in too_old.detail
    assert doctor.check_driver_cuda("550.54.15", CPU_TORCH, True).status is Status.FAIL
    assert doctor.check_driver_cuda(None, CUDA_TORCH, gpus_expected=True).status is Status.FAIL
    assert doctor.check_driver_cuda(None, CPU_TORCH, gpus_expected=False).status is Status.WARN
    cuda_12_8 = TorchFacts("2.13.0+cu128", "12.8", True, 8, True, None)
    assert doctor.check_driver_cuda("570.26", cuda_12_8, True).status is Status.PASS  # exactly the toolkit's driver
    assert doctor.check_driver_cuda("570.26", CUDA_TORCH, True).status is Status.PASS


def test_nccl():
    assert doctor.check_nccl(CUDA_TORCH, have_gpus=True).status is Status.PASS
    assert doctor.check_nccl(CPU_TORCH, have_gpus=True).status is Status.FAIL
    assert doctor.check_nccl(CPU_TORCH, have_gpus=False).status is Status.WARN


def test_real_torch_facts_match_the_installed_build_and_the_driver():
    """Against what pip installed (the distribution's metadata) and what the kernel driver registered."""
    import importlib.metadata

    facts = TorchFacts.from_torch()
    assert facts.version == importlib.metadata.version("torch")
    local = facts.version.partition("+")[2]  # "cpu", "cu124", ... ("" for builds without a local tag)
    if local == "cpu":
        assert facts.cuda is None and not facts.cuda_available and not facts.nccl_available
    elif local.startswith("cu"):
        assert facts.cuda is not None and facts.cuda.replace(".", "") == local[2:]
    gpus = Path("/proc/driver/nvidia/gpus")
    registered = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if facts.cuda is not None and visible is None:
        assert facts.device_count == registered and facts.cuda_available is (registered > 0)
    elif facts.cuda is None:
        assert facts.device_count == 0 and not facts.cuda_available
    if facts.nccl_available and facts.cuda_available:
        assert re.fullmatch(r"\d+\.\d+\.\d+", facts.nccl_version or ""), facts.nccl_version


# -- EFA, plugin, environment, limits -----------------------------------------------------------------------

def test_efa_pass_with_devices_and_a_provider(tmp_path):
    devices = doctor.read_rdma_devices(rdma_sys(tmp_path / "sys"))
    assert [d.is_efa and d.active for d in devices] == [True] * 4
    fi_info = doctor.find_fi_info(env_with_path(tmp_path / "bin"))
    assert fi_info is None
    fi_info = doctor.find_fi_info(env_with_path(fi_info_bin(tmp_path / "bin").parent))
    result = doctor.check_efa(devices, fi_info, expect_efa=True)
    assert result.status is Status.PASS and "4 EFA devices" in result.detail


def test_efa_fail_when_libfabric_has_no_efa_provider(tmp_path):
    devices = doctor.read_rdma_devices(rdma_sys(tmp_path / "sys"))
    fi_info = str(fi_info_bin(tmp_path / "bin", efa=False))
    result = doctor.check_efa(devices, fi_info, expect_efa=False)
    assert result.status is Status.FAIL and "fi_getinfo: -61" in result.detail
    assert result.doc == "docs/troubleshooting.md#efa-not-used-falls-back-to-tcp"
    missing = doctor.check_efa(devices, None, expect_efa=False)
    assert missing.status is Status.FAIL and "no fi_info" in missing.detail


def test_efa_fail_when_a_port_is_down(tmp_path):
    devices = doctor.read_rdma_devices(rdma_sys(tmp_path / "sys", state="1: DOWN"))
    result = doctor.check_efa(devices, str(fi_info_bin(tmp_path / "bin")), expect_efa=False)
    assert result.status is Status.FAIL and "not ACTIVE" in result.detail


def test_fi_info_that_hangs_is_cut_short(tmp_path):
    slow = executable(tmp_path / "fi_info", "sleep 30\n")
    started = time.monotonic()
    found, message = doctor.run_fi_info(str(slow), timeout_s=0.5)
    assert not found and "no answer" in message and time.monotonic() - started < 5


def test_no_efa_device_warns_or_fails_when_expected(tmp_path):
    assert doctor.read_rdma_devices(tmp_path) == []
    assert doctor.check_efa([], None, expect_efa=False).status is Status.WARN
    assert doctor.check_efa([], None, expect_efa=True).status is Status.FAIL
    other = doctor.read_rdma_devices(rdma_sys(tmp_path / "sys", devices=1, driver="mlx5_core"))
    assert doctor.check_efa(other, None, expect_efa=True).status is Status.FAIL


def test_ofi_nccl_plugin(tmp_path):
    devices = doctor.read_rdma_devices(rdma_sys(tmp_path / "sys"))
    lib = tmp_path / "ofi/lib"
    lib.mkdir(parents=True)
    assert doctor.check_ofi_nccl(devices, doctor.find_ofi_nccl_plugin({"LD_LIBRARY_PATH": str(lib)})).status is Status.FAIL
    (lib / "libnccl-net.so").write_bytes(b"\x7fELF")
    found = doctor.find_ofi_nccl_plugin({"LD_LIBRARY_PATH": str(lib)})
    assert found == lib / "libnccl-net.so"
    assert doctor.check_ofi_nccl(devices, found).status is Status.PASS
    assert doctor.check_ofi_nccl([], None).status is Status.PASS


def test_nccl_env():
    import psutil

    interfaces = sorted(psutil.net_if_addrs())
    assert "lo" in interfaces
    clean = doctor.check_nccl_env({"NCCL_DEBUG": "INFO", "FI_PROVIDER": "efa", "NCCL_SOCKET_IFNAME": "lo"}, interfaces, True)
    assert clean.status is Status.PASS and "FI_PROVIDER=efa" in clean.detail
    wrong_provider = doctor.check_nccl_env({"FI_PROVIDER": "tcp"}, interfaces, efa_present=True)
    assert wrong_provider.status is Status.FAIL and wrong_provider.fix == "export FI_PROVIDER=efa"
    no_such_nic = doctor.check_nccl_env({"NCCL_SOCKET_IFNAME": "ens999"}, interfaces, efa_present=False)
    assert no_such_nic.status is Status.FAIL and no_such_nic.doc_anchor == doctor.ANCHOR_NCCL_HANG
    assert doctor.check_nccl_env({"NCCL_SOCKET_IFNAME": "^docker,lo"}, ["lo", "ens5"], False).status is Status.PASS
    assert doctor.check_nccl_env({"NCCL_SOCKET_IFNAME": "^lo"}, ["lo"], False).status is Status.FAIL
    assert doctor.check_nccl_env({"NCCL_SOCKET_IFNAME": "=ens"}, ["ens5"], False).status is Status.FAIL
    hang = doctor.check_nccl_env({"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"}, interfaces, False)
    assert hang.status is Status.WARN and "never aborted" in hang.detail


def test_memlock():
    assert doctor.check_memlock(None, efa_present=True).status is Status.PASS
    limited = doctor.check_memlock(8 << 20, efa_present=True)
    assert limited.status is Status.FAIL and "8192 KiB" in limited.detail
    assert doctor.check_memlock(8 << 20, efa_present=False).status is Status.PASS
    soft = next(line.split()[3] for line in Path("/proc/self/limits").read_text().splitlines()
                if line.startswith("Max locked memory"))
    assert doctor.memlock_limit() == (None if soft == "unlimited" else int(soft))


def test_hugepages_with_efa(tmp_path):
    hugepages_proc(tmp_path / "proc", 5128)
    sys_root = rdma_sys(tmp_path / "sys")
    count = doctor._read_int(tmp_path / "proc/sys/vm/nr_hugepages")
    thp = (sys_root / "kernel/mm/transparent_hugepage/enabled").read_text()
    risky = doctor.check_hugepages(count, thp, {}, efa_present=True)
    assert risky.status is Status.WARN and risky.fix.startswith("export FI_EFA_USE_HUGE_PAGE=0")
    assert "transparent huge pages: madvise" in risky.detail
    assert doctor.check_hugepages(count, thp, {"FI_EFA_USE_HUGE_PAGE": "0"}, True).status is Status.PASS
    assert doctor.check_hugepages(count, thp, {}, efa_present=False).status is Status.PASS


# -- storage and ports --------------------------------------------------------------------------------------

def test_disk(tmp_path):
    assert doctor.check_disk(tmp_path / "not/yet/created", 0).status is Status.PASS
    full = doctor.check_disk(tmp_path, 1e9)
    assert full.status is Status.FAIL and "need >= 1e+09 GB" in full.detail


def test_checkpoint_write_local_leaves_nothing_behind(tmp_path):
    target = tmp_path / "ckpt/run1"
    result = doctor.check_checkpoint_write(str(target))
    assert result.status is Status.PASS, result.detail
    assert not (tmp_path / "ckpt").exists()  # the probe removed the directories it created
    target.mkdir(parents=True)
    assert doctor.check_checkpoint_write(f"file://{target}").status is Status.PASS
    assert list(target.iterdir()) == []


def test_checkpoint_write_local_fail(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = doctor.check_checkpoint_write(str(blocker / "ckpt"))
    assert result.status is Status.FAIL and str(blocker) in result.detail
    assert result.doc == "docs/troubleshooting.md#checkpoint-storage-not-writable-or-disk-full"
    assert doctor.check_checkpoint_write("gs://bucket/x").status is Status.FAIL
    assert doctor.check_checkpoint_write(None).status is Status.SKIP


@pytest.fixture
def fake_aws(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def test_checkpoint_write_s3_pass_and_missing_bucket(moto, fake_aws):
    import boto3

    result = doctor.check_checkpoint_write("s3://ddlc-doctor/write-check", endpoint_url=moto.url)
    assert result.status is Status.PASS, result.detail
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    # The bucket is shared with the other ops tests: only this test's prefix must be empty again.
    assert s3.list_objects_v2(Bucket="ddlc-doctor", Prefix="write-check").get("KeyCount", 0) == 0  # probe deleted
    missing = doctor.check_checkpoint_write("s3://no-such-bucket/checkpoints", endpoint_url=moto.url)
    assert missing.status is Status.FAIL


def test_checkpoint_write_s3_unreachable_fails_fast(fake_aws):
    nobody = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = doctor.check_checkpoint_write("s3://ddlc-doctor/checkpoints", endpoint_url=nobody)
    assert result.status is Status.FAIL and nobody in result.detail
    assert time.monotonic() - started < 10


def test_deadline_abandons_a_stuck_probe():
    with pytest.raises(TimeoutError, match="no answer within 0.2 s"):
        doctor._run_with_deadline(lambda: time.sleep(5), 0.2)


def test_master_port_free_and_busy():
    port = free_port()
    assert doctor.check_master_port(port).status is Status.PASS
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        busy = doctor.check_master_port(port)
    assert busy.status is Status.FAIL and f"port {port} is in use" in busy.detail


# -- other hosts --------------------------------------------------------------------------------------------

def test_localhost_hosts_pass(tmp_path):
    facts = doctor.gather_hosts(SshRunner(), ["localhost", "127.0.0.1"], PYTHON)
    assert all(f.reachable for f in facts), [f.error for f in facts]
    assert doctor.check_clock_skew(facts).status is Status.PASS
    versions = doctor.check_versions(doctor.local_versions(), facts)
    assert versions.status is Status.PASS and "on all 2 hosts" in versions.detail


def test_unreachable_host_is_named():
    closed = free_port()
    runner = SshRunner(port=closed, local_hosts=set())
    assert runner.command("127.0.0.1", ["true"])[:5] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
    facts = doctor.gather_hosts(runner, ["127.0.0.1"], PYTHON, timeout_s=15)
    result = doctor.check_clock_skew(facts)
    assert result.status is Status.FAIL
    assert result.detail.startswith("host unreachable: 127.0.0.1: ") and "Connection refused" in result.detail
    assert doctor.check_clock_skew(facts, unreachable_status=Status.WARN).status is Status.WARN
    versions = doctor.check_versions({"python": "3.11.7", "torch": "2.13.0", "ddlc": "0.1.0"}, facts)
    assert versions.status is Status.WARN and "unreachable: 127.0.0.1" in versions.detail


def test_clock_skew_thresholds():
    def host(name, offset, uncertainty=0.01):
        return HostFacts(name, versions={}, offset_s=offset, uncertainty_s=uncertainty)

    assert doctor.check_clock_skew([host("a", 0.002), host("b", -0.3)]).status is Status.PASS
    assert doctor.check_clock_skew([host("a", 0.0), host("b", 2.5)]).status is Status.WARN
    failed = doctor.check_clock_skew([host("a", 0.0), host("b", -120.0)])
    assert failed.status is Status.FAIL and "on b" in failed.detail
    assert doctor.check_clock_skew([host("a", 1.5, uncertainty=1.0)]).status is Status.PASS  # within round trip
    assert doctor.check_clock_skew(None).status is Status.SKIP


def test_version_drift_fails():
    local = {"python": "3.11.7", "torch": "2.13.0", "ddlc": "0.1.0"}
    same = HostFacts("node-1", versions=dict(local), offset_s=0, uncertainty_s=0)
    drift = HostFacts("node-2", versions={**local, "torch": "2.12.1"}, offset_s=0, uncertainty_s=0)
    result = doctor.check_versions(local, [same, drift])
    assert result.status is Status.FAIL and "node-2: torch 2.12.1" in result.detail


# -- all together -------------------------------------------------------------------------------------------

def test_healthy_efa_node_passes_everything(tmp_path):
    import torch

    proc = hugepages_proc(nvidia_proc(tmp_path / "proc"), 5128)
    sys_root = rdma_sys(tmp_path / "sys")
    plugin_dir = tmp_path / "ofi"
    plugin_dir.mkdir()
    (plugin_dir / "libnccl-net.so").write_bytes(b"\x7fELF")
    env = env_with_path(fi_info_bin(tmp_path / "bin").parent, LD_LIBRARY_PATH=str(plugin_dir), FI_PROVIDER="efa",
                        FI_EFA_USE_HUGE_PAGE="0", NCCL_DEBUG="INFO")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=8\n")
    options = doctor.DoctorOptions(
        environ=env, cluster_env_file=tmp_path / "none", proc_root=proc, sys_root=sys_root,
        torch=TorchFacts(torch.__version__, "12.4", True, 8, True, "2.21.5"), memlock_bytes=None,
        interfaces=["lo", "ens32"], checkpoint_uri=str(tmp_path / "ckpt"), min_free_gb=0, hostfile=hostfile,
        master_port=free_port(), expect_gpus=8, expect_efa=True,
        # NCCL's own log of a one-process init that loaded aws-ofi-nccl (the probe needs a GPU to run for real)
        nccl_probe=lambda: (0, "host:1:1 [0] NCCL INFO NET/OFI Selected provider is efa\n"
                               "host:1:1 [0] NCCL INFO Using network Libfabric\n"),
        dev_root=tmp_path / "dev", instance_type="g5.xlarge",
    )
    results = doctor.run_checks(options)
    assert {r.name: r.status.value for r in results} == {
        "gpus": "PASS", "driver-cuda": "PASS", "nccl": "PASS", "efa": "PASS", "ofi-nccl": "PASS",
        "nccl-net-plugin": "PASS", "fabricmanager": "PASS",
        "nccl-env": "PASS", "memlock": "PASS", "hugepages": "PASS", "disk": "PASS", "checkpoint-write": "PASS",
        "master-port": "PASS", "clock-skew": "PASS", "versions": "PASS", "checkpoint-shared": "PASS",
    }, [r for r in results if r.status is not Status.PASS]
    assert doctor.report(results)["ok"] is True


def test_this_cpu_machine_says_what_is_absent():
    results = {r.name: r for r in doctor.run_checks(doctor.DoctorOptions(min_free_gb=0, master_port=free_port()))}
    if not Path("/proc/driver/nvidia/version").exists():
        assert results["gpus"].status is Status.WARN and "no NVIDIA GPU" in results["gpus"].detail
        assert "no NVIDIA driver loaded" in results["driver-cuda"].detail
    else:  # a GPU host: the count the driver registered, and the driver version it reports
        count = len(list(Path("/proc/driver/nvidia/gpus").iterdir()))
        assert results["gpus"].detail.startswith(f"{count} x "), results["gpus"]
        driver = re.search(r"\b(\d{3}\.\d+(?:\.\d+)?)\b", Path("/proc/driver/nvidia/version").read_text()).group(1)
        assert f"driver {driver}" in results["driver-cuda"].detail, results["driver-cuda"]
        if "CUDA_VISIBLE_DEVICES" not in os.environ and count:
            assert results["gpus"].status is Status.PASS, results["gpus"]
    if not Path("/sys/class/infiniband").exists():
        assert results["efa"].status is Status.WARN and "no EFA device" in results["efa"].detail
    assert results["checkpoint-write"].status is Status.SKIP and results["clock-skew"].status is Status.SKIP
    assert doctor.worst(list(results.values())) is not Status.FAIL


def test_node_boot_status_from_the_boot_script(tmp_path):
    from ddlc.ops.boot_status import check_boot

    assert check_boot(None).status is doctor.Status.SKIP
    assert check_boot("ok 2026-12-01T10:00:00Z\n").status is doctor.Status.PASS
    failed = check_boot("failed: the FSx for Lustre client could not be installed (lustre-client-modules-6.8); /fsx is not mounted\n")
    assert failed.status is doctor.Status.FAIL and failed.detail.startswith("boot failed: the FSx for Lustre client")
    assert failed.doc == "docs/troubleshooting.md#node-boot-failed"
    assert check_boot("running\n").status is doctor.Status.WARN
    status_file = tmp_path / "boot-status"
    status_file.write_text("failed: the ddlc command does not run\n")
    results = doctor.run_checks(doctor.DoctorOptions(
        environ={}, cluster_env_file=tmp_path / "none", boot_status_file=status_file, proc_root=tmp_path,
        sys_root=tmp_path, torch=doctor.TorchFacts("2.6.0", None, False, 0, False, None), interfaces=["lo"],
        run_dir=tmp_path, min_free_gb=0,
        checkpoint_uri=str(tmp_path / "ckpt"), master_port=0))
    assert results[0].name == "node-boot"
    boot = results[0]
    assert boot.status is doctor.Status.FAIL and doctor.worst(results) is doctor.Status.FAIL
