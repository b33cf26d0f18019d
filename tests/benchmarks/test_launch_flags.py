"""The benchmarks' documented `--nproc N` flag reaches the script, not torchrun.

torchrun's own parser used to read `--nproc 2` after the script as an ambiguous abbreviation of its
--nproc-per-node and exit 2 before any rank ran; every benchmark that re-launches itself shares
benchmarks/torchrun_self.relaunch_under_torchrun, so one tiny run covers them all.
"""

from __future__ import annotations

from tests.support import PYTHON, REPO, run


def test_checkpoint_benchmark_runs_with_nproc_2():
    result = run([PYTHON, str(REPO / "benchmarks" / "checkpoint.py"), "--nproc", "2", "--rounds", "1",
                  "--layers", "1", "--width", "64"], cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "workers: 2 x cpu" in result.stdout
    assert "save throughput ratio ddlc/raw" in result.stdout
