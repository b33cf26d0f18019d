"""`make gpu-check` (scripts/gpu_check.sh) in its CPU mode: every GPU check says SKIP and why, the rest runs, the
report is written, exit 0. (On a GPU machine the same script runs the real checks.)"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.support import REPO, child_env


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine runs the real checks (minutes), not this")
def test_cpu_mode_skips_gpu_checks_with_the_reason(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--out", str(out)], cwd=tmp_path,
                          env=child_env(PYTHONPATH=str(REPO / "src")), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "gpu-check: no CUDA GPU (torch.cuda.is_available() is False): GPU checks are skipped, the rest run"
    for name in ("async-checkpoint", "resume-reproduces", "gpu-resume", "throughput", "no-host-syncs", "zero3-init",
                 "flash-attention", "nvml"):
        assert any(line.startswith(f"SKIP {name} ") and "no CUDA GPU" in line for line in lines), proc.stdout
    assert any(line.startswith("PASS doctor ") for line in lines), proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report][0] == "async-checkpoint"  # most important first
    assert json.loads((out / "doctor" / "doctor.json").read_text())["ok"] is True


def test_unknown_check_is_exit_2(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--only", "nope", "--out", str(tmp_path)],
                          env=child_env(PYTHONPATH=str(REPO / "src")), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--only nope" in proc.stderr
