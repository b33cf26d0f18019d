"""The local dashboard's and `ddlc report`'s work on a big run store, side by side with another checkout.

    run store: --runs finished runs of --steps steps each, plus one live run whose metrics.jsonl is --big-mb MB
    per checkout (a subprocess with that checkout's src/ on PYTHONPATH):
      Cost tab, cold (first request) and warm (median of --repeat requests), 500 runs
      Training tab on the 50 MB run: seconds per refresh and bytes of JSON per refresh (cold, warm)
      `ddlc report utilization --since 7d` on the store: wall seconds, CPU seconds and peak RSS

    python benchmarks/dashboard_data.py [--runs 500] [--steps 200] [--big-mb 50] [--baseline-src /tmp/base/src]
    --report-only --report-repeat 7: only the report, the checkouts alternating 7 times (a shared machine's load
    changes from one run to the next): median and fastest CPU seconds and wall seconds per checkout, cold (empty
    column cache, $XDG_CACHE_HOME/ddlc) and warm (right after, with the cache the cold run wrote)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, statistics, sys, time
from pathlib import Path
from ddlc.dashboards.cost import Pricing
from ddlc.dashboards.panel_data import PanelData
from ddlc.dashboards.server import _dumps
from ddlc.monitor.pricing import load_price_table

root, big, repeat = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
data = PanelData(root, Pricing("g5.xlarge", None, load_price_table()))
if hasattr(data, "store"):
    data.store.max_age_s = 0.0  # every request looks at the disk (the server shares one look per second)

def timed(slug, run):
    began = time.perf_counter()
    body = _dumps(data.dashboard_data(slug, run))
    return time.perf_counter() - began, len(body)

out = {}
out["cost_cold_s"], _ = timed("cost-tracking", "run-0000")
warm = [timed("cost-tracking", "run-0000")[0] for _ in range(repeat)]
out["cost_warm_s"] = statistics.median(warm)
out["big_cold_s"], out["big_cold_bytes"] = timed("training-progress", big)
samples = [timed("training-progress", big) for _ in range(max(repeat // 2, 2))]
out["big_warm_s"] = statistics.median(s for s, _ in samples)
out["big_bytes"] = samples[-1][1]
out["big_cost_tab_bytes"] = timed("cost-tracking", big)[1]
print(json.dumps(out))
"""


# `ddlc report ...` as the console script runs it, printing its own peak RSS (KiB) when it exits.
REPORT = """
import atexit, resource, sys
usage = lambda: resource.getrusage(resource.RUSAGE_SELF)
atexit.register(lambda: print("MAXRSS", usage().ru_maxrss, usage().ru_utime + usage().ru_stime, file=sys.stderr))
sys.argv = ["ddlc", *sys.argv[1:]]
from ddlc.cli.main import run
run()
"""


def make_store(root: Path, runs: int, steps: int, big_mb: float) -> str:
    now = time.time()
    for index in range(runs):
        run = root / f"run-{index:04d}"
        run.mkdir(parents=True)
        start = now - 86400 + index * 60
        lines = [json.dumps({"step": s, "loss": 5.0 / s, "lr": 1e-3, "grad_norm": 0.5, "step_time_s": 0.05,
                             "tokens_per_s": 10000.0, "tokens_seen": 512 * s, "epoch": s / 1000,
                             "time": start + s * 0.05}) for s in range(1, steps + 1)]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (run / "config.yaml").write_text(f"training:\n  max_steps: {steps}\n")
        (run / "summary.json").write_text(json.dumps({
            "run_name": run.name, "run_dir": str(run), "steps": steps, "start_step": 0, "first_loss": 5.0,
            "final_loss": 5.0 / steps, "tokens_per_second": 10000.0, "wall_time_s": steps * 0.05,
            "world_size": 1, "strategy": "ddp"}))
    big = root / "big-live"
    big.mkdir()
    start = now - 3600
    with (big / "metrics.jsonl").open("w") as handle:
        step, written = 0, 0
        while written < big_mb * 1e6:
            step += 1
            line = json.dumps({"step": step, "loss": 5.0 / step + 0.01 * (step % 7), "lr": 3e-4, "grad_norm": 0.41,
                               "step_time_s": 0.0123, "tokens_per_s": 41234.5, "tokens_seen": 512 * step,
                               "epoch": step / 50000, "time": start + step * 0.0123}) + "\n"
            handle.write(line)
            written += len(line)
    (big / "config.yaml").write_text(f"training:\n  max_steps: {step * 2}\n")
    return big.name


def measure(src: Path, root: Path, big: str, repeat: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", MEASURE, str(root), big, str(repeat)], env=env,
                            capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"measuring {src} failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out.update(measure_report(src, root))
    return out


def measure_report(src: Path, root: Path, cache_home: Optional[Path] = None) -> dict:
    """The weekly report, as a user runs it; CPU time and peak RSS of the child from getrusage. Its column cache
    (checkouts that have one) lives in `cache_home`: a new empty one unless given (cold: nothing cached)."""
    fresh = cache_home is None
    cache_home = Path(tempfile.mkdtemp(prefix="ddlc-xdg-")) if fresh else cache_home
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cache_home)}
    out = {}
    report_dir = Path(tempfile.mkdtemp(prefix="ddlc-report-"))
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", REPORT, "report", "utilization", "--since", "7d", "--runs-dir",
                           str(root), "-o", str(report_dir / "r.md")], env=env, capture_output=True, text=True,
                          timeout=3600)
    out["report_s"] = time.perf_counter() - began
    peak = [line.split()[1:] for line in done.stderr.splitlines() if line.startswith("MAXRSS ")]
    out["report_cpu_s"] = float(peak[-1][1]) if peak else float("nan")  # on a shared machine: wall minus waiting
    out["report_peak_rss_mb"] = int(peak[-1][0]) / 1024 if peak else float("nan")
    out["report_exit"] = done.returncode
    if done.returncode != 0:
        raise SystemExit(f"the report with {src} failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(report_dir, ignore_errors=True)
    if fresh:
        shutil.rmtree(cache_home, ignore_errors=True)
    return out


def report_rounds(sources: list[Path], root: Path, rounds: int) -> list[dict]:
    """The report alone, checkouts alternating `rounds` times: per checkout the median and the fastest run, cold
    (an empty column cache) and warm (run again right after, the cold run's cache in place)."""
    samples: list[list[dict]] = [[] for _ in sources]
    for _ in range(rounds):
        for index, src in enumerate(sources):
            cache_home = Path(tempfile.mkdtemp(prefix="ddlc-xdg-"))
            try:
                cold = measure_report(src, root, cache_home)
                warm = measure_report(src, root, cache_home)
            finally:
                shutil.rmtree(cache_home, ignore_errors=True)
            samples[index].append({**cold, **{"warm_" + key: value for key, value in warm.items()}})
    results = []
    for runs in samples:
        summary = {}
        for key in ("report_cpu_s", "report_s", "report_peak_rss_mb", "warm_report_cpu_s", "warm_report_s"):
            values = sorted(run[key] for run in runs)
            summary[key + "_median"] = statistics.median(values)
            summary[key + "_min"] = values[0]
        results.append(summary)
        print("cold CPU s per round:", " ".join(f"{run['report_cpu_s']:.2f}" for run in runs),
              "| warm:", " ".join(f"{run['warm_report_cpu_s']:.2f}" for run in runs))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--big-mb", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--src", type=Path, default=REPO / "src")
    parser.add_argument("--baseline-src", type=Path, default=None)
    parser.add_argument("--report-only", action="store_true", help="measure only `ddlc report`")
    parser.add_argument("--report-repeat", type=int, default=5, help="with --report-only: rounds per checkout")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ddlc-store-"))
    try:
        big = make_store(root, args.runs, args.steps, args.big_mb)
        size = (root / big / "metrics.jsonl").stat().st_size
        print(f"store: {args.runs} runs x {args.steps} steps + {big} ({size / 1e6:.1f} MB metrics.jsonl)")
        sources = [args.src] + ([args.baseline_src] if args.baseline_src else [])
        if args.report_only:
            results = report_rounds(sources, root, args.report_repeat)
        else:
            results = [measure(src, root, big, args.repeat) for src in sources]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'':28s}" + "".join(f"{str(s)[-20:]:>22s}" for s in sources) + ("   ratio" if len(results) == 2 else ""))
    for key in results[0]:
        row = f"{key:28s}" + "".join(f"{r[key]:>22.3f}" if isinstance(r[key], float) else f"{str(r[key])[-22:]:>22}"
                                     for r in results)
        if len(results) == 2 and isinstance(results[1][key], (int, float)) and results[1][key]:
            row += f"   {results[0][key] / results[1][key]:.3f}"
        print(row)


if __name__ == "__main__":
    main()
