"""MFU (a peak table that names its source, "unknown" otherwise) in metrics.jsonl, the summary and Prometheus; and
`training.compile` falling back to eager with a warning where torch.compile cannot run."""

from __future__ import annotations

import json

import pytest
from prometheus_client import generate_latest

from ddlc.monitor.training import TrainingMetrics
from ddlc.runtime.mfu import MfuMeter, flops_per_token, peak_for
from tests.support import CONFIG, FAST, PYTHON, TRAIN_PY, assert_ok, run


def test_peak_table_names_its_source_and_never_invents_a_peak():
    h100 = peak_for("NVIDIA H100 80GB HBM3", "bf16")
    assert h100.flops == 989e12 and "datasheet" in h100.source and "H100 bf16 989" in h100.source
    assert peak_for("NVIDIA H200", "bf16").flops == 989e12
    assert peak_for("NVIDIA A100-SXM4-40GB", "bf16").flops == 312e12
    assert peak_for("NVIDIA A100-SXM4-40GB", "fp32").flops == 156e12  # fp32 on CUDA runs on TF32 tensor cores
    t4 = peak_for("Tesla T4", "bf16")
    assert t4.flops is None and t4.source == "unknown: Tesla T4 is not in ddlc's peak table (ddlc/runtime/mfu.py)"
    assert peak_for(None, "bf16").flops is None


def test_mfu_arithmetic():
    per_token = flops_per_token(n_params=124_000_000, n_layer=12, n_embd=768, block_size=1024)
    assert per_token == 6 * 124_000_000 + 12 * 12 * 768 * 1024
    meter = MfuMeter(per_token, peak_for("NVIDIA H100 80GB HBM3", "bf16"), gpus=8)
    assert meter.ratio(8 * 400_000) == pytest.approx(per_token * 400_000 / 989e12)
    assert MfuMeter(per_token, peak_for("Tesla T4", "bf16"), 1).ratio(1000.0) is None


def test_prometheus_gauge():
    metrics = TrainingMetrics("r", 0, 1, "n", None, 1)
    text = generate_latest(metrics.registry).decode()
    assert "ddlc_train_mfu_ratio" not in text  # no step yet
    sample = 'ddlc_train_mfu_ratio{node="n",rank="0",run="r"}'
    metrics.observe_step(1, 2.0, 1e-3, 0.5, 0.1, 100, 4, mfu=0.42)
    assert f"{sample} 0.42" in generate_latest(metrics.registry).decode()
    metrics.observe_step(2, 2.0, 1e-3, 0.5, 0.1, 100, 4)  # unknown peak
    assert f"{sample} NaN" in generate_latest(metrics.registry).decode()


def test_cpu_run_reports_mfu_unknown_and_compile_falls_back_to_eager(tmp_path):
    """On this CPU machine, with torch.compile made unable to build (no C++ compiler): a warning, then eager."""
    proc = run([PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *FAST, "training.max_steps=3",
                "training.log_interval=1", "training.compile=true", "checkpoint.enabled=false",
                f"monitoring.run_dir={tmp_path}", "monitoring.run_name=mfu", "monitoring.progress=plain"],
               cwd=tmp_path, timeout=300, CXX="/nonexistent/c++")
    assert_ok(proc)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: training.compile")]
    assert len(warnings) == 1 and "cannot run on this platform" in warnings[0] and "training runs eager" in warnings[0]
    records = [json.loads(line) for line in (tmp_path / "mfu" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["mfu"] is None for r in records)
    summary = json.loads((tmp_path / "mfu" / "summary.json").read_text())
    assert summary["extra"]["mfu"] == "unknown" and summary["extra"]["mfu_peak"] == "unknown: not a CUDA GPU"
