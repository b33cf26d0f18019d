"""`ddlc health` on recorded readings: a stand-in NVML library, a recorded kernel log and a sysfs tree, through the
library and through the real CLI (exit 0/1, one line per failed check, --json, bad input exit 2)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ddlc.ops.health import HealthOptions, NodeReadings, failures, run_checks, run_health
from tests.support import PYTHON, REPO, run

DDLC = [PYTHON, "-m", "ddlc.cli.main"]


class RecordedNvml:
    """NVML as recorded on a GPU node: per device (uncorrected volatile ECC, (corr, unc, pending, failure))."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices: list[tuple[int | None, tuple | None]], init_error: str | None = None):
        self.devices, self.init_error, self.shut_down = devices, init_error, False

    def nvmlInit(self):
        if self.init_error:
            raise self.NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA A100-SXM4-40GB"

    def nvmlDeviceGetTotalEccErrors(self, handle, error_type, counter_type):
        assert (error_type, counter_type) == (1, 0)  # uncorrected, volatile
        value = self.devices[handle][0]
        if value is None:
            raise self.NVMLError("Not Supported")
        return value

    def nvmlDeviceGetRemappedRows(self, handle):
        value = self.devices[handle][1]
        if value is None:
            raise self.NVMLError("Not Supported")
        return value


HEALTHY_GPU = (0, (0, 0, 0, 0))
KMSG_OK = ("6,1001,5000000,-;NVRM: loading NVIDIA UNIX x86_64 Kernel Module  535.183.01\n"
           "4,1002,9000000,-;NVRM: Xid (PCI:0000:10:1c): 13, pid=4242, name=python, Graphics Exception\n")
KMSG_79 = KMSG_OK + "3,1003,9900000,-;NVRM: Xid (PCI:0000:a0:1c): 79, pid=4242, GPU has fallen off the bus.\n"


def node(tmp_path: Path, kmsg: str = KMSG_OK, instance_type: str = "p4d.24xlarge", efa: int = 4) -> dict:
    """A recorded p4d node: sysfs with its DMI product name and EFA devices, and a kernel log."""
    sys_root = tmp_path / "sys"
    dmi = sys_root / "devices/virtual/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_name").write_text(instance_type + "\n")
    drivers = sys_root / "bus/pci/drivers"
    (drivers / "efa").mkdir(parents=True)
    (drivers / "mlx5_core").mkdir()
    for index in range(efa):
        device = sys_root / f"class/infiniband/rdmap{16 + index}s27"
        (device / "device").mkdir(parents=True)
        (device / "device/driver").symlink_to(drivers / "efa")
    (sys_root / "class/infiniband/mlx5_0/device").mkdir(parents=True)  # an RDMA device that is not EFA
    (sys_root / "class/infiniband/mlx5_0/device/driver").symlink_to(drivers / "mlx5_core")
    log = tmp_path / "kmsg"
    log.write_text(kmsg)
    return {"sys_root": sys_root, "kmsg": log, "environ": {}, "cluster_env_file": tmp_path / "absent.env"}


def check(tmp_path, gpus, options=None, **node_args):
    import tempfile

    where = Path(tempfile.mkdtemp(dir=tmp_path))
    readings, results = run_health(options or HealthOptions(min_free_gb=0), nvml=RecordedNvml(gpus),
                                   **node(where, **node_args))
    return readings, {r.check: r for r in results}


def test_healthy_p4d_passes_every_check(tmp_path):
    readings, results = check(tmp_path, [HEALTHY_GPU] * 8)
    assert not failures(results.values()), [r.line() for r in results.values()]
    assert results["gpus"].detail == "8 of 8 GPUs visible"  # expected count from the instance type
    assert results["efa"].detail == "4 of 4 EFA devices present (p4d.24xlarge)"
    assert "application Xids 13 ignored" in results["xid"].detail
    assert readings.efa_devices == [f"rdmap{i}s27" for i in range(16, 20)]


@pytest.mark.parametrize("gpus, kmsg, efa, failed, words", [
    ([HEALTHY_GPU] * 7, KMSG_OK, 4, "gpus", "7 of 8 expected GPUs visible"),
    ([HEALTHY_GPU] * 8, KMSG_79, 4, "xid", "Xid 79 (GPU has fallen off the bus) on 0000:a0:1c since boot"),
    ([HEALTHY_GPU] * 7 + [(2, (0, 1, 0, 0))], KMSG_OK, 4, "ecc", "(GPU 7: 2)"),
    ([HEALTHY_GPU] * 3 + [(0, (0, 1, 1, 0))] + [HEALTHY_GPU] * 4, KMSG_OK, 4, "row_remap",
     "row remap pending on GPU 3"),
    ([HEALTHY_GPU] * 8 + [], KMSG_OK, 3, "efa", "3 of 4 EFA devices present (p4d.24xlarge)"),
])
def test_each_fault_fails_its_check_only(tmp_path, gpus, kmsg, efa, failed, words):
    _, results = check(tmp_path, gpus, kmsg=kmsg, efa=efa)
    bad = failures(results.values())
    assert [r.check for r in bad] == [failed]
    assert words in bad[0].detail


def test_failed_row_remapping_and_unsupported_queries(tmp_path):
    _, results = check(tmp_path, [(None, None)] * 7 + [(None, (0, 5, 0, 1))])
    assert "row remapping failed on GPU 7 (replace the node)" in results["row_remap"].detail
    assert results["ecc"].ok and "0 of 8 GPUs report ECC" in results["ecc"].detail  # ECC off: not a failure


def test_driver_gone_on_a_cluster_worker(tmp_path):
    """A worker whose driver no longer loads: NVML fails to start, and the cluster says 8 GPUs."""
    env = tmp_path / "cluster.env"
    env.write_text("DDLC_ROLE=worker\nDDLC_GPUS_PER_NODE=8\n")
    args = node(tmp_path, instance_type="unknown-type")
    args["cluster_env_file"] = env
    options = HealthOptions(min_free_gb=0, require_ntp=False)  # this test machine's clock is not NTP-synced
    _, results = run_health(options, nvml=RecordedNvml([], "Driver Not Loaded"), **args)
    assert [r.line() for r in failures(results)] == [
        "gpus: 0 of 8 expected GPUs visible (NVML: NVMLError: Driver Not Loaded)"]


def test_disk_and_clock(tmp_path):
    _, results = check(tmp_path, [HEALTHY_GPU] * 8, options=HealthOptions(min_free_gb=1e9))
    assert not results["disk"].ok and "(need >= 1e+09 GB)" in results["disk"].detail
    skewed = HealthOptions(min_free_gb=0, reference_time=time.time() - 120, max_skew_s=30)
    _, results = check(tmp_path, [HEALTHY_GPU] * 8, options=skewed)
    assert not results["clock"].ok and "off the launcher's clock (limit 30 s)" in results["clock"].detail
    readings, _ = check(tmp_path, [HEALTHY_GPU] * 8)
    readings.now = 3600.0  # a dead RTC: 1970
    assert not {r.check: r for r in run_checks(readings, HealthOptions(min_free_gb=0))}["clock"].ok
    readings.now, readings.clock_synchronized = time.time(), False
    assert not {r.check: r for r in run_checks(readings, HealthOptions(min_free_gb=0, require_ntp=True))}["clock"].ok


def test_unreadable_kernel_log_is_skipped_not_failed(tmp_path):
    args = node(tmp_path)
    args["kmsg"] = tmp_path / "no-kmsg"
    _, results = run_health(HealthOptions(min_free_gb=0), nvml=RecordedNvml([HEALTHY_GPU] * 8), **args)
    xid = {r.check: r for r in results}["xid"]
    assert xid.ok and xid.skipped and "not checked" in xid.detail


def test_cli_on_recorded_readings_one_line_per_failure_and_json(tmp_path):
    readings, _ = check(tmp_path, [HEALTHY_GPU] * 7 + [(3, (0, 0, 1, 0))], kmsg=KMSG_79)
    recorded = tmp_path / "node.json"
    recorded.write_text(readings.to_json())
    proc = run([*DDLC, "health", "--readings", str(recorded), "--min-free-gb", "0"], cwd=REPO)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "UNHEALTHY xid: Xid 79 (GPU has fallen off the bus) on 0000:a0:1c since boot",
        "UNHEALTHY ecc: uncorrected ECC errors since the driver loaded (GPU 7: 3)",
        "UNHEALTHY row_remap: row remap pending on GPU 7 (needs a GPU reset or reboot)"]
    proc = run([*DDLC, "health", "--readings", str(recorded), "--min-free-gb", "0", "--json"], cwd=REPO)
    document = json.loads(proc.stdout)
    assert proc.returncode == 1 and document["healthy"] is False
    assert {c["check"]: c["ok"] for c in document["checks"]} == {
        "gpus": True, "xid": False, "ecc": False, "row_remap": False, "efa": True, "disk": True,
        "clock": True}


def test_cli_this_machine_and_bad_input(tmp_path):
    proc = run([*DDLC, "health", "--min-free-gb", "0", "--record", str(tmp_path / "me.json")], cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.startswith("healthy: gpus: "), proc.stdout + proc.stderr
    assert NodeReadings.from_dict(json.loads((tmp_path / "me.json").read_text())).disk_free_bytes > 0
    (tmp_path / "bad.json").write_text('{"gpus": [], "colour": 1}')
    for args, message in ((["--readings", str(tmp_path / "bad.json")], "not a recorded reading"),
                          (["--readings", str(tmp_path / "none.json")], "No such file"),
                          (["--expect-gpus", "-1"], "--expect-gpus")):
        proc = run([*DDLC, "health", *args], cwd=REPO)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
