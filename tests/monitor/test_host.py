"""Host collector: CPU, memory and the disk of the checkpoint path, checked against psutil."""

from __future__ import annotations

from pathlib import Path

import psutil

from ddlc.monitor.host import HostCollector
from tests.monitor.helpers import collected



def test_cpu_memory_and_checkpoint_disk(tmp_path: Path) -> None:
    samples = collected(HostCollector("n1", checkpoint_path=tmp_path))
    node = frozenset({("node", "n1")})
    assert 0.0 <= samples[("ddlc_cpu_utilization_ratio", node)] <= 1.0
    assert samples[("ddlc_cpus", node)] == psutil.cpu_count()
    assert samples[("ddlc_memory_total_bytes", node)] == psutil.virtual_memory().total
    assert 0 < samples[("ddlc_memory_used_bytes", node)] < samples[("ddlc_memory_total_bytes", node)]
    disk = frozenset({("node", "n1"), ("path", str(tmp_path))})
    assert samples[("ddlc_disk_total_bytes", disk)] == psutil.disk_usage(str(tmp_path)).total
    assert 0 < samples[("ddlc_disk_used_bytes", disk)] < samples[("ddlc_disk_total_bytes", disk)]


def test_vanished_checkpoint_path_drops_disk_series_only(tmp_path: Path) -> None:
    volume = tmp_path / "ckpt"
    volume.mkdir()
    collector = HostCollector("n1", checkpoint_path=volume)
    assert any(name == "ddlc_disk_free_bytes" for name, _ in collected(collector))
    volume.rmdir()
    samples = collected(collector)
    assert not any(name.startswith("ddlc_disk_") for name, _ in samples)
    assert ("ddlc_memory_total_bytes", frozenset({("node", "n1")})) in samples


def test_without_checkpoint_path_no_disk_series() -> None:
    assert not any(name.startswith("ddlc_disk_") for name, _ in collected(HostCollector("n1")))
