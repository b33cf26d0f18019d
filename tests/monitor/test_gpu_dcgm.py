"""The DCGM-style GPU signals (clocks, energy, PCIe replays, NVLink errors, row remapping) through an NVML-shaped
stand-in (no GPU here): values map to base units, a GPU or binding without a query leaves out that value only,
and the agent's output with them still passes `promtool check metrics`. The no-NVML path of this machine is
covered by test_gpu.py (real, not a stand-in)."""

from __future__ import annotations

import subprocess

from prometheus_client import CollectorRegistry, generate_latest

from ddlc.monitor.gpu import GpuCollector
from tests.monitor.helpers import collected
from tests.monitor.test_gpu import StandInNvml


class DcgmStandIn(StandInNvml):
    """dev0: an SXM board with 4 NVLinks (link 2 inactive) and row remapping; dev1: a PCIe board without NVLink,
    whose driver does not report energy or remapped rows."""

    NVML_NVLINK_MAX_LINKS = 36

    def nvmlDeviceGetClockInfo(self, handle: str, clock: int) -> int:
        return {1: 1980, 2: 2619}[clock] if handle == "dev0" else {1: 1410, 2: 1215}[clock]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        if handle == "dev1":
            raise self.Error(3)  # NOT_SUPPORTED
        return 123_456_789  # millijoules

    def nvmlDeviceGetPcieReplayCounter(self, handle: str) -> int:
        return 7 if handle == "dev0" else 0

    def nvmlDeviceGetNvLinkState(self, handle: str, link: int) -> int:
        if handle == "dev1" or link >= 4:
            raise self.Error(2)  # INVALID_ARGUMENT: no such link
        return 0 if link == 2 else 1

    def nvmlDeviceGetNvLinkErrorCounter(self, handle: str, link: int, counter: int) -> int:
        if link == 2:
            raise AssertionError("an inactive link is not read")
        return (link + 1) * 10 + counter  # replay=0, recovery=1, crc_flit=2, crc_data=3

    def nvmlDeviceGetRemappedRows(self, handle: str) -> tuple[int, int, int, int]:
        if handle == "dev1":
            raise self.Error(3)
        return (2, 1, 1, 0)  # correctable, uncorrectable, pending, failure


def _samples(nvml) -> dict:
    collector = GpuCollector("n1", nvml=nvml, watch_xid=False)
    try:
        return collected(collector)
    finally:
        collector.close()


def test_dcgm_style_values_map_to_metrics():
    samples = _samples(DcgmStandIn())
    g0, g1 = {("node", "n1"), ("gpu", "0")}, {("node", "n1"), ("gpu", "1")}
    at = lambda name, labels, **more: samples[(name, frozenset(labels | set(more.items())))]  # noqa: E731
    assert at("ddlc_gpu_sm_clock_hertz", g0) == 1980e6 and at("ddlc_gpu_memory_clock_hertz", g0) == 2619e6
    assert at("ddlc_gpu_sm_clock_hertz", g1) == 1410e6 and at("ddlc_gpu_memory_clock_hertz", g1) == 1215e6
    assert at("ddlc_gpu_energy_joules_total", g0) == 123_456.789
    assert ("ddlc_gpu_energy_joules_total", frozenset(g1)) not in samples  # unsupported: left out, not 0
    assert at("ddlc_gpu_pcie_replays_total", g0) == 7 and at("ddlc_gpu_pcie_replays_total", g1) == 0
    # Active links 0, 1, 3: (1 + 2 + 4) * 10 + counter * 3 links.
    for kind, counter in (("replay", 0), ("recovery", 1), ("crc_flit", 2), ("crc_data", 3)):
        assert at("ddlc_gpu_nvlink_errors_total", g0, type=kind) == 70 + 3 * counter
    assert not any(name == "ddlc_gpu_nvlink_errors_total" and ("gpu", "1") in labels for name, labels in samples)
    assert at("ddlc_gpu_row_remap_pending", g0) == 1 and at("ddlc_gpu_row_remap_failed", g0) == 0
    assert at("ddlc_gpu_remapped_rows", g0, type="correctable") == 2
    assert at("ddlc_gpu_remapped_rows", g0, type="uncorrectable") == 1
    assert not any(name.startswith("ddlc_gpu_row_remap") and ("gpu", "1") in labels for name, labels in samples)


def test_a_binding_without_these_queries_loses_only_them():
    """An older nvidia-ml-py (the plain stand-in has none of the new queries): the other GPU series are intact."""
    samples = _samples(StandInNvml())
    names = {name for name, _ in samples}
    assert {"ddlc_gpu_utilization_ratio", "ddlc_gpu_ecc_errors_total", "ddlc_gpu_power_watts"} <= names
    assert not names & {"ddlc_gpu_sm_clock_hertz", "ddlc_gpu_energy_joules_total", "ddlc_gpu_pcie_replays_total",
                        "ddlc_gpu_nvlink_errors_total", "ddlc_gpu_row_remap_pending"}


def test_promtool_accepts_the_new_series(promtool):
    registry = CollectorRegistry(auto_describe=False)
    collector = GpuCollector("n1", nvml=DcgmStandIn(), watch_xid=False)
    registry.register(collector)
    try:
        text = generate_latest(registry).decode()
    finally:
        collector.close()
    assert "ddlc_gpu_nvlink_errors_total" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
