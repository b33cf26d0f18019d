"""Load on ddlc's HTTP servers (node agent, a rank's metrics endpoint, the local dashboard) from many clients.

    this script --(re-exec in a fresh network namespace: its own loopback, its own kernel counters)-->
      server under test (a subprocess: `ddlc agent`, a TrainingMetrics endpoint, or `ddlc dashboard`)
      <- C asyncio clients, each: connect, GET, read the reply, close; again, for --seconds
      <- then --idle sockets that connect and send nothing, held while C clients keep going
    -> req/s, latency p50/p99/max, kernel ListenOverflows/ListenDrops (TcpExt, this namespace only),
       the server's peak thread count, HEAD and error-body checks; one JSON line with --json

Side by side: `--baseline-src DIR` runs the same load against another checkout's src/ (e.g. the commit before
the change: `git archive <commit> src | tar -x -C /tmp/base`) and prints both and their ratios.

    python benchmarks/server_load.py --target agent --clients 50 --seconds 10
    python benchmarks/server_load.py --target agent --baseline-src /tmp/base/src
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _netstat() -> dict[str, int]:
    """TcpExt counters of this network namespace."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            return dict(zip(head.split()[1:], map(int, values.split()[1:])))
    return {}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (what serving costs the process it runs in)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


RANK_SERVER = """
import sys, time
from ddlc.monitor.training import TrainingMetrics
metrics = TrainingMetrics("bench", rank=0, world_size=1, node="bench", instance_type=None, num_nodes=1, port=0)
print("serving", metrics.url, flush=True)
step = 0
while True:  # a training loop's bookkeeping: a step every 10 ms, a log step every 10
    step += 1
    metrics.observe_step(step, 2.0, 1e-3, 0.5, 0.01, 2048, 32)
    if step % 10 == 0 and hasattr(metrics, "publish"):
        metrics.publish()
    time.sleep(0.01)
"""


def _make_runs(directory: Path, count: int, steps: int) -> None:
    """`count` small finished runs (the Cost tab reads every one of them)."""
    now = time.time()
    for index in range(count):
        run = directory / f"run-{index:04d}"
        run.mkdir(parents=True)
        start = now - 3600 + index
        lines = [json.dumps({"step": s, "loss": 5.0 / s, "lr": 1e-3, "grad_norm": 0.5, "step_time_s": 0.05,
                             "tokens_per_s": 10000.0, "tokens_seen": 512 * s, "epoch": s / 1000, "time": start + s * 0.05})
                 for s in range(1, steps + 1)]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (run / "config.yaml").write_text(f"training:\n  max_steps: {steps}\n")
        (run / "summary.json").write_text(json.dumps({
            "run_name": run.name, "run_dir": str(run), "steps": steps, "start_step": 0, "first_loss": 5.0,
            "final_loss": 5.0 / steps, "tokens_per_second": 10000.0, "wall_time_s": steps * 0.05, "world_size": 1,
            "strategy": "ddp"}))


def start_server(target: str, src: Path, runs_dir: Path | None) -> tuple[subprocess.Popen, str, str]:
    """(process, host:port, path to request)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    if target == "agent":
        command = [sys.executable, "-m", "ddlc", "agent", "--port", "0", "--checkpoint-path", "."]
        path = "/metrics"
    elif target == "rank":
        command = [sys.executable, "-c", RANK_SERVER]
        path = "/metrics"
    else:
        command = [sys.executable, "-m", "ddlc", "dashboard", "--runs-dir", str(runs_dir), "--port", "0"]
        path = "/api/dashboards/cost-tracking?run=run-0000"
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if "serving" not in line:
        process.kill()
        raise SystemExit(f"{target} did not start: {line!r}")
    url = line.split("serving", 1)[1].split()[0]
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    return process, hostport, path


async def _request(host: str, port: int, path: str, method: str = "GET", timeout: float = 30.0) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""


async def _clients(host: str, port: int, path: str, clients: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                status, _ = await _request(host, port, path)
                if status != 200:
                    errors += 1
            except (OSError, asyncio.TimeoutError):
                errors += 1
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(one() for _ in range(clients)))
    return latencies, errors


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


async def _measure(process: subprocess.Popen, hostport: str, path: str, clients: int, seconds: float,
                   idle: int) -> dict:
    host, port = hostport.rsplit(":", 1)
    host, port = host.strip("[]"), int(port)
    peak = {"threads": _threads(process.pid)}
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            peak["threads"] = max(peak["threads"], _threads(process.pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    await _request(host, port, path)  # warm
    before = _netstat()
    cpu_before = _cpu_seconds(process.pid)
    began = time.perf_counter()
    latencies, errors = await _clients(host, port, path, clients, seconds)
    elapsed = time.perf_counter() - began
    cpu = _cpu_seconds(process.pid) - cpu_before
    loaded = _netstat()
    # Idle sockets (connect, send nothing) held while clients keep requesting.
    idle_sockets = []
    for _ in range(idle):
        try:
            idle_sockets.append(await asyncio.open_connection(host, port))
        except OSError:
            break
    idle_latencies, idle_errors = await _clients(host, port, path, min(clients, 10), min(seconds, 3.0))
    idle_threads = _threads(process.pid)
    for _, writer in idle_sockets:
        writer.close()
    after = _netstat()
    # HEAD, and an error reply to a request with a 60 KB query.
    head_status, head_body = await _request(host, port, path, "HEAD")
    try:
        big_status, big_body = await _request(host, port, "/nope?" + "q" * 60_000)
    except ConnectionResetError:  # refused with a reset while the client was still sending: nothing echoed
        big_status, big_body = -1, b""
    stop.set()
    await sampler
    return {
        "requests": len(latencies), "req_per_s": len(latencies) / elapsed, "errors": errors,
        "server_cpu_ms_per_request": 1000 * cpu / max(len(latencies), 1),
        "p50_ms": 1000 * _percentile(latencies, 0.50), "p99_ms": 1000 * _percentile(latencies, 0.99),
        "max_ms": 1000 * max(latencies), "listen_overflows": loaded.get("ListenOverflows", 0) - before.get("ListenOverflows", 0),
        "listen_drops": loaded.get("ListenDrops", 0) - before.get("ListenDrops", 0),
        "threads_peak": peak["threads"], "idle_sockets": len(idle_sockets), "threads_with_idle_sockets": idle_threads,
        "p99_ms_with_idle_sockets": 1000 * _percentile(idle_latencies, 0.99), "errors_with_idle_sockets": idle_errors,
        "listen_overflows_with_idle_sockets": after.get("ListenOverflows", 0) - loaded.get("ListenOverflows", 0),
        "head_status": head_status, "head_body_bytes": len(head_body),
        "error_status_60kb_query": big_status, "error_body_bytes_60kb_query": len(big_body),
    }


def run_one(target: str, src: Path, clients: int, seconds: float, idle: int, runs: int, steps: int) -> dict:
    runs_dir = Path(tempfile.mkdtemp(prefix="ddlc-load-")) if target == "dashboard" else None
    try:
        if runs_dir is not None:
            _make_runs(runs_dir, runs, steps)
        process, hostport, path = start_server(target, src, runs_dir)
        try:
            result = asyncio.run(_measure(process, hostport, path, clients, seconds, idle))
        finally:
            process.kill()
            process.wait(timeout=30)
        return {"target": target, "src": str(src), "clients": clients, **result}
    finally:
        if runs_dir is not None:
            shutil.rmtree(runs_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=["agent", "rank", "dashboard"], default="agent")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle", type=int, default=800, help="idle sockets held open in the second phase")
    parser.add_argument("--runs", type=int, default=500, help="dashboard: runs in the store")
    parser.add_argument("--steps", type=int, default=200, help="dashboard: steps per run")
    parser.add_argument("--src", type=Path, default=REPO / "src", help="the ddlc sources to serve")
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src/ to compare with")
    parser.add_argument("--json", action="store_true", help="one JSON line per measured checkout")
    parser.add_argument("--no-netns", action="store_true", help="stay in this network namespace")
    args = parser.parse_args()
    if not args.no_netns and os.environ.get("DDLC_LOAD_NETNS") != "1" and shutil.which("unshare"):
        # A namespace of our own: the kernel counters then count only this test's sockets.
        command = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, *sys.argv]
        raise SystemExit(subprocess.call(command, env={**os.environ, "DDLC_LOAD_NETNS": "1"}))
    results = [run_one(args.target, args.src, args.clients, args.seconds, args.idle, args.runs, args.steps)]
    if args.baseline_src is not None:
        results.append(run_one(args.target, args.baseline_src, args.clients, args.seconds, args.idle, args.runs, args.steps))
    if args.json:
        for result in results:
            print(json.dumps(result), flush=True)
        return
    keys = [k for k in results[0] if k not in ("target", "src")]
    print(f"{args.target}: {args.clients} clients x {args.seconds:g} s, then {args.idle} idle sockets")
    print(f"{'':34s}" + "".join(f"{Path(r['src']).parent.name[:18]:>20s}" for r in results) + ("   ratio" if len(results) == 2 else ""))
    for key in keys:
        row = f"{key:34s}" + "".join(f"{r[key]:>20.1f}" if isinstance(r[key], float) else f"{r[key]:>20}" for r in results)
        if len(results) == 2 and isinstance(results[0][key], (int, float)) and results[1][key]:
            row += f"   {results[0][key] / results[1][key]:.2f}"
        print(row)


if __name__ == "__main__":
    main()
