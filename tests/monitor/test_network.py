"""Network collector: psutil interfaces of this machine and EFA counters from a sysfs tree built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import psutil

from ddlc.monitor.network import NetworkCollector, read_efa_counters
from tests.monitor.helpers import collected


def make_efa_tree(root: Path, device: str, port: str, counters: dict[str, str]) -> None:
    directory = root / device / "ports" / port / "hw_counters"
    directory.mkdir(parents=True)
    for name, value in counters.items():
        (directory / name).write_text(value + "\n")



def test_efa_counters_from_sysfs(tmp_path: Path) -> None:
    make_efa_tree(tmp_path, "rdmap16s27", "1", {"rx_bytes": "123456789", "tx_bytes": "987654321", "rx_pkts": "1000",
                                                "lifespan": "12", "rdma_read_bytes": "4096"})
    make_efa_tree(tmp_path, "rdmap32s27", "1", {"rx_bytes": "5", "tx_bytes": "not-a-number"})
    samples = collected(NetworkCollector("n1", infiniband_root=tmp_path))
    efa0 = {("node", "n1"), ("device", "rdmap16s27"), ("port", "1")}
    efa1 = {("node", "n1"), ("device", "rdmap32s27"), ("port", "1")}
    assert samples[("ddlc_efa_receive_bytes_total", frozenset(efa0))] == 123456789
    assert samples[("ddlc_efa_transmit_bytes_total", frozenset(efa0))] == 987654321
    assert samples[("ddlc_efa_receive_packets_total", frozenset(efa0))] == 1000
    assert samples[("ddlc_efa_rdma_read_bytes_total", frozenset(efa0))] == 4096
    assert samples[("ddlc_efa_receive_bytes_total", frozenset(efa1))] == 5
    assert ("ddlc_efa_transmit_bytes_total", frozenset(efa1)) not in samples  # unreadable value skipped
    assert not any("lifespan" in name for name, _ in samples)  # counters outside the table are ignored


def test_efa_counters_follow_sysfs_changes(tmp_path: Path) -> None:
    make_efa_tree(tmp_path, "efa0", "1", {"rx_bytes": "100"})
    collector = NetworkCollector("n1", infiniband_root=tmp_path)
    key = ("ddlc_efa_receive_bytes_total", frozenset({("node", "n1"), ("device", "efa0"), ("port", "1")}))
    assert collected(collector)[key] == 100
    (tmp_path / "efa0/ports/1/hw_counters/rx_bytes").write_text("250\n")
    assert collected(collector)[key] == 250


def test_no_efa_root_means_no_efa_series(tmp_path: Path) -> None:
    assert read_efa_counters(tmp_path / "absent") == {}
    samples = collected(NetworkCollector("n1", infiniband_root=tmp_path / "absent"))
    assert not any(name.startswith("ddlc_efa_") for name, _ in samples)


def _kernel_counters() -> dict[tuple[str, str], int]:
    """Each interface's byte and packet counters as the kernel's sysfs shows them (not through psutil)."""
    out = {}
    for device in Path("/sys/class/net").iterdir():
        for field in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
            try:
                out[(device.name, field)] = int((device / "statistics" / field).read_text())
            except (OSError, ValueError):
                pass
    return out


def test_every_interface_reports_bytes_in_and_out(tmp_path: Path) -> None:
    before_kernel = _kernel_counters()
    samples = collected(NetworkCollector("n1", infiniband_root=tmp_path))
    after_kernel = _kernel_counters()
    interfaces = set(psutil.net_io_counters(pernic=True))
    assert "lo" in interfaces
    for direction in ("receive", "transmit"):
        reported = {dict(labels)["device"] for name, labels in samples if name == f"ddlc_network_{direction}_bytes_total"}
        assert reported == interfaces
    # Each value lies between the kernel's counter read just before and just after the scrape: the right counter
    # of the right interface, in the right direction.
    names = {"rx_bytes": "ddlc_network_receive_bytes_total", "tx_bytes": "ddlc_network_transmit_bytes_total",
             "rx_packets": "ddlc_network_receive_packets_total", "tx_packets": "ddlc_network_transmit_packets_total"}
    checked = 0
    for (device, field), low in before_kernel.items():
        if device in interfaces and (device, field) in after_kernel:
            value = samples[(names[field], frozenset({("node", "n1"), ("device", device)}))]
            assert low <= value <= after_kernel[(device, field)], (device, field, low, value)
            checked += 1
    assert checked >= 4  # at least lo's four counters
