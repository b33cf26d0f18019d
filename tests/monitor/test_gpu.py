"""GPU collector: the real no-NVML path of this machine, and the NVML value mapping through a stand-in library."""

from __future__ import annotations

import logging
import queue
import time
from types import SimpleNamespace

import pytest

from ddlc.monitor import gpu as gpu_module
from ddlc.monitor.gpu import GpuCollector
from tests.monitor.helpers import collected



def nvml_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


@pytest.mark.skipif(nvml_present(), reason="this machine has NVML; the real-GPU test covers it")
def test_without_nvml_reports_no_gpus_and_says_so_once(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.setattr(gpu_module, "_unavailable_reported", False)
    with caplog.at_level(logging.WARNING, logger="ddlc.monitor.gpu"):
        first, second = GpuCollector("n1"), GpuCollector("n1")
        samples = collected(first) | collected(second)
    assert not first.available and first.gpu_count == 0
    assert samples == {("ddlc_gpus", frozenset({("node", "n1")})): 0.0}
    messages = [r.getMessage() for r in caplog.records if "NVML is not available" in r.getMessage()]
    assert len(messages) == 1, messages
    first.close()
    second.close()


@pytest.mark.skipif(not nvml_present(), reason="needs an NVIDIA driver (runs on GPU nodes)")
def test_real_gpus_report_utilization_and_memory() -> None:
    collector = GpuCollector("gpu-node")
    try:
        samples = collected(collector)
        assert collector.gpu_count >= 1
        for gpu in range(collector.gpu_count):
            labels = {("node", "gpu-node"), ("gpu", str(gpu))}
            total = samples[("ddlc_gpu_memory_total_bytes", frozenset(labels))]
            used = samples[("ddlc_gpu_memory_used_bytes", frozenset(labels))]
            assert 0 <= used <= total and total > 1 << 30
            assert 0.0 <= samples[("ddlc_gpu_utilization_ratio", frozenset(labels))] <= 1.0
    finally:
        collector.close()


class StandInNvml:
    """Stand-in for the NVML library (no GPU here): two devices; device 1 has no power sensor."""

    NVML_ERROR_TIMEOUT = 10

    class Error(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(f"nvml error {value}")
            self.value = value

    def __init__(self) -> None:
        self.devices = ["dev0", "dev1"]
        self.events: "queue.Queue[SimpleNamespace]" = queue.Queue()
        self.shut_down = False

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None:
        self.shut_down = True
    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)
    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return self.devices[index]
    def nvmlDeviceGetIndex(self, handle: str) -> int:
        return self.devices.index(handle)
    def nvmlDeviceGetName(self, handle: str) -> bytes:
        return b"NVIDIA H100 80GB HBM3"
    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return f"GPU-{handle}"
    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=87 if handle == "dev0" else 12, memory=40)
    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(used=60 * 2**30, total=80 * 2**30, free=20 * 2**30)
    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        if handle == "dev1":
            raise self.Error(3)  # NVML_ERROR_NOT_SUPPORTED
        return 612_500  # milliwatts
    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        return 71
    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: str) -> int:
        return 0x4 | 0x40  # sw power cap + hw thermal slowdown
    def nvmlDeviceGetTotalEccErrors(self, handle: str, error_type: int, counter_type: int) -> int:
        return 5 if error_type == 0 else 1
    def nvmlEventSetCreate(self) -> str:
        return "event-set"
    def nvmlDeviceRegisterEvents(self, handle: str, types: int, event_set: str) -> None: ...
    def nvmlEventSetFree(self, event_set: str) -> None: ...
    def nvmlEventSetWait(self, event_set: str, timeout_ms: int) -> SimpleNamespace:
        try:
            return self.events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise self.Error(self.NVML_ERROR_TIMEOUT) from None


def test_nvml_values_map_to_metrics() -> None:
    nvml = StandInNvml()
    collector = GpuCollector("n1", nvml=nvml)
    try:
        samples = collected(collector)
    finally:
        collector.close()
    g0 = {("node", "n1"), ("gpu", "0")}
    g1 = {("node", "n1"), ("gpu", "1")}
    assert samples[("ddlc_gpus", frozenset({("node", "n1")}))] == 2
    assert samples[("ddlc_gpu_utilization_ratio", frozenset(g0))] == pytest.approx(0.87)
    assert samples[("ddlc_gpu_utilization_ratio", frozenset(g1))] == pytest.approx(0.12)
    assert samples[("ddlc_gpu_memory_used_bytes", frozenset(g0))] == 60 * 2**30
    assert samples[("ddlc_gpu_memory_total_bytes", frozenset(g0))] == 80 * 2**30
    assert samples[("ddlc_gpu_power_watts", frozenset(g0))] == pytest.approx(612.5)
    assert ("ddlc_gpu_power_watts", frozenset(g1)) not in samples  # unsupported query: value left out
    assert samples[("ddlc_gpu_temperature_celsius", frozenset(g1))] == 71
    throttle = {
        dict(labels)["reason"]: value for (name, labels), value in samples.items()
        if name == "ddlc_gpu_clock_throttle_active" and ("gpu", "0") in labels
    }
    assert {r for r, v in throttle.items() if v == 1} == {"sw_power_cap", "hw_thermal_slowdown"}
    assert throttle["gpu_idle"] == 0
    assert samples[("ddlc_gpu_ecc_errors_total", frozenset(g0 | {("type", "corrected")}))] == 5
    assert samples[("ddlc_gpu_ecc_errors_total", frozenset(g0 | {("type", "uncorrected")}))] == 1
    info = [labels for name, labels in samples if name == "ddlc_gpu_info"]
    assert ("name", "NVIDIA H100 80GB HBM3") in info[0]
    assert nvml.shut_down


def test_xid_events_are_counted_per_gpu_from_zero() -> None:
    nvml = StandInNvml()
    collector = GpuCollector("n1", nvml=nvml)
    try:
        key0 = ("ddlc_gpu_xid_errors_total", frozenset({("node", "n1"), ("gpu", "0")}))
        key1 = ("ddlc_gpu_xid_errors_total", frozenset({("node", "n1"), ("gpu", "1")}))
        before = collected(collector)
        assert before[key0] == 0 and before[key1] == 0  # both watched GPUs, before any event
        nvml.events.put(SimpleNamespace(device="dev1", eventData=79))
        nvml.events.put(SimpleNamespace(device="dev1", eventData=79))
        nvml.events.put(SimpleNamespace(device="dev0", eventData=48))
        deadline = time.monotonic() + 5
        while collected(collector)[key0] == 0 and time.monotonic() < deadline:  # events are handled in order
            time.sleep(0.02)
        samples = collected(collector)
        assert samples[key1] == 2
        assert samples[key0] == 1
        assert samples[("ddlc_gpu_last_xid", frozenset({("node", "n1"), ("gpu", "0")}))] == 48
    finally:
        collector.close()
