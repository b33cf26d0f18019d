"""The three HTTP servers under load, on loopback in a network namespace of their own (so the kernel's listen
counters count only these sockets): 50 clients opening a connection per request, then hundreds of idle sockets
held open. No listen overflow, a bounded number of threads, HEAD answered without a body, a 60 KB request
answered without an echo. No latency assertion: this machine is shared; latency is measured by
benchmarks/server_load.py and recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support import PYTHON, REPO, run

SCRIPT = REPO / "benchmarks" / "server_load.py"
MAX_THREADS = 12  # the event loop, 4 workers, the main thread, and the process's own (NVML, sampler, GC...)


def _netns_or_skip() -> None:
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.decode()[-200:]}")


@pytest.mark.parametrize("target,seconds,idle", [("agent", 3, 300), ("rank", 2, 100), ("dashboard", 2, 100)])
def test_many_clients_cause_no_listen_overflow_and_few_threads(target, seconds, idle):
    _netns_or_skip()
    result = run([PYTHON, str(SCRIPT), "--target", target, "--clients", "50", "--seconds", str(seconds),
                  "--idle", str(idle), "--runs", "20", "--steps", "50", "--json"], cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["requests"] > 50 and report["errors"] == 0 and report["errors_with_idle_sockets"] == 0, report
    assert report["listen_overflows"] == 0 and report["listen_drops"] == 0, report
    assert report["listen_overflows_with_idle_sockets"] == 0, report
    assert report["idle_sockets"] == idle and report["threads_with_idle_sockets"] <= MAX_THREADS, report
    assert report["threads_peak"] <= MAX_THREADS, report
    assert report["head_status"] == 200 and report["head_body_bytes"] == 0, report
    assert report["error_body_bytes_60kb_query"] <= 1000, report
