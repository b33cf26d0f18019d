"""Training throughput with monitoring on vs off, in one run (issue #6 target: on/off >= 0.99).

ddlc's real training loop (`Trainer.run_until`, the demo GPT) runs blocks of steps, alternating "off" (no
TrainingMetrics, nobody scraping) and "on" (TrainingMetrics fed every step, while a separate scraper process pulls
the rank endpoint and a running `ddlc agent` every --scrape-interval seconds, as Prometheus would). Alternating
blocks in one process cancels drift (thermal, other load); the ratio is taken over the summed block times
(and, as a noise check, per adjacent block pair).

    python benchmarks/monitor_overhead.py [--blocks 8] [--steps 50] [--scrape-interval 1.0] [--threads N]

With --clients N (e.g. 50) the scraper is replaced by N clients hammering an endpoint as fast as they can (a
connection per request), and there are three conditions: "off", "rank" (the clients hammer this process's rank
endpoint) and "elsewhere" (the same clients hammer an identical endpoint in another process). rank/elsewhere is
what serving inside the training process costs beyond the same load on the machine.

    python benchmarks/monitor_overhead.py --clients 50 --blocks 6 --steps 60
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
import timeit
import urllib.request

import tempfile

import torch
from prometheus_client import generate_latest

from ddlc.config import load_config
from ddlc.monitor.training import TrainingMetrics
from ddlc.runtime import MetricsLogger, Trainer, init_distributed


def scraper(urls: list[str], interval: float, active, stop) -> None:
    """A separate process, like Prometheus: scrape every `interval` s while `active` is set."""
    while not stop.is_set():
        if active.is_set():
            for url in urls:
                try:
                    with urllib.request.urlopen(url, timeout=5) as response:
                        response.read()
                except OSError:
                    pass
        stop.wait(interval)


def hammer(url: str, clients: int, active, stop) -> None:
    """A separate process: `clients` concurrent clients, each GET after GET (new connection each), while `active`."""
    import asyncio

    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)

    async def client() -> None:
        while not stop.is_set():
            if not active.is_set():
                await asyncio.sleep(0.02)
                continue
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                await reader.read()
                writer.close()
            except OSError:
                await asyncio.sleep(0.01)

    async def main() -> None:
        await asyncio.gather(*(client() for _ in range(clients)))

    asyncio.run(main())


ELSEWHERE = """
import time
from ddlc.monitor.training import TrainingMetrics
metrics = TrainingMetrics("bench", rank=0, world_size=1, node="bench", instance_type=None, num_nodes=1, port=0)
for step in range(1, 100):
    metrics.observe_step(step, 2.0, 1e-3, 0.5, 0.01, 2048, 32)
if hasattr(metrics, "publish"):
    metrics.publish()
print("serving", metrics.url, flush=True)
while True:
    time.sleep(1)
"""


def hammered(args, trainer, logger, tokens_per_step) -> None:
    """Three conditions: off / rank (hammer this process) / elsewhere (hammer another process)."""
    metrics = TrainingMetrics("bench", rank=0, world_size=1, node="bench", instance_type=None, num_nodes=1, port=0)
    other = subprocess.Popen([sys.executable, "-c", ELSEWHERE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    other_url = other.stdout.readline().split()[-1]
    stop = multiprocessing.Event()
    actives = {"rank": multiprocessing.Event(), "elsewhere": multiprocessing.Event()}
    workers = [multiprocessing.Process(target=hammer, args=(url, args.clients, actives[name], stop))
               for name, url in (("rank", metrics.url), ("elsewhere", other_url))]
    for worker in workers:
        worker.start()
    times: dict[str, list[float]] = {"off": [], "rank": [], "elsewhere": []}

    def block(condition: str) -> float:
        for name, event in actives.items():
            (event.set if name == condition else event.clear)()
        trainer.metrics = metrics  # monitoring on in every condition; only where the load goes changes
        time.sleep(0.3)  # let the clients reach full speed
        start = time.perf_counter()
        trainer.run_until(trainer.state.step + args.steps, logger)
        return time.perf_counter() - start

    try:
        for _ in range(2):
            block("off")
        orders = [("off", "rank", "elsewhere"), ("elsewhere", "rank", "off")]
        for index in range(args.blocks):
            for condition in orders[index % 2]:
                times[condition].append(block(condition))
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
        other.kill()
        metrics.close()
    steps = args.blocks * args.steps
    rates = {name: steps / sum(values) for name, values in times.items()}
    print(f"{args.clients} clients hammering; {steps} steps per condition in {args.blocks} rotating blocks; "
          f"torch threads: {torch.get_num_threads()}; cpus: {os.cpu_count()}")
    for name, rate in rates.items():
        print(f"{name:<10}{rate:>10.1f} steps/s{rate * tokens_per_step:>12.0f} tokens/s")
    pairs = sorted(e / r for r, e in zip(times["rank"], times["elsewhere"]))
    print(f"rank/off {rates['rank'] / rates['off']:.3f}; elsewhere/off {rates['elsewhere'] / rates['off']:.3f}; "
          f"rank/elsewhere {rates['rank'] / rates['elsewhere']:.3f} (median of block pairs {pairs[len(pairs) // 2]:.3f})")


def start_agent() -> tuple[subprocess.Popen, str]:
    agent = subprocess.Popen(
        [sys.executable, "-m", "ddlc", "agent", "--port", "0", "--checkpoint-path", "."],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = agent.stdout.readline()
    if not line.startswith("ddlc agent serving "):
        raise SystemExit(f"agent did not start: {line!r}")
    return agent, line.split()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=8, help="blocks per condition")
    parser.add_argument("--steps", type=int, default=50, help="steps per block")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes (Prometheus default: 15)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--clients", type=int, default=0, help="N clients hammering instead of a periodic scrape")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(None, ["training.max_steps=1000000", "training.log_interval=25", "checkpoint.enabled=false",
                             "optimizer.warmup_steps=0", "optimizer.decay=constant",
                             f"monitoring.run_dir={tempfile.mkdtemp()}", "monitoring.run_name=bench"])
    trainer = Trainer(cfg, init_distributed("cpu", "gloo"))
    logger = MetricsLogger(trainer.run_dir, trainer.total_steps, progress="plain", log_interval=10**9)
    tokens_per_step = trainer.tokens_per_step

    if args.clients:
        hammered(args, trainer, logger, tokens_per_step)
        return
    metrics = TrainingMetrics("bench", rank=0, world_size=1, node="bench", instance_type=None, num_nodes=1, port=0)
    agent, agent_url = start_agent()
    active, stop = multiprocessing.Event(), multiprocessing.Event()
    scrape_process = multiprocessing.Process(target=scraper, args=([metrics.url, agent_url], args.scrape_interval, active, stop))
    scrape_process.start()

    def run_block(monitored: bool) -> float:
        trainer.metrics = metrics if monitored else None  # exactly what monitoring.metrics_port switches
        start = time.perf_counter()
        trainer.run_until(trainer.state.step + args.steps, logger)
        return time.perf_counter() - start

    def timed(monitored: bool) -> float:
        (active.set if monitored else active.clear)()
        return run_block(monitored)

    try:
        for _ in range(3):  # warm-up: allocator, agent and scraper start-up
            run_block(False)
        off_times, on_times = [], []
        for block in range(args.blocks):
            # ABBA order: off,on then on,off, so a trend in machine speed hits both conditions alike
            order = (False, True) if block % 2 == 0 else (True, False)
            for monitored in order:
                (on_times if monitored else off_times).append(timed(monitored))
    finally:
        stop.set()
        scrape_process.join()
        agent.terminate()
        agent.wait()
        metrics.close()

    steps = args.blocks * args.steps
    off_rate, on_rate = steps / sum(off_times), steps / sum(on_times)
    pair_ratios = sorted(off_t / on_t for off_t, on_t in zip(off_times, on_times))
    print(f"steps per condition: {steps} in {args.blocks} alternating blocks; scrape every {args.scrape_interval}s; "
          f"torch threads: {torch.get_num_threads()}; cpus: {os.cpu_count()}")
    print(f"{'monitoring':<12}{'steps/s':>10}{'tokens/s':>12}")
    print(f"{'off':<12}{off_rate:>10.1f}{off_rate * tokens_per_step:>12.0f}")
    print(f"{'on':<12}{on_rate:>10.1f}{on_rate * tokens_per_step:>12.0f}")
    print(f"on/off throughput ratio: {on_rate / off_rate:.4f} (target >= 0.99); "
          f"median of block pairs: {pair_ratios[len(pair_ratios) // 2]:.4f}, "
          f"range {pair_ratios[0]:.3f}-{pair_ratios[-1]:.3f}")

    # The same cost from its parts, which a busy machine disturbs far less than whole-loop timing:
    # observe_step on every step, plus rendering the rank's endpoint once per scrape.
    probe = TrainingMetrics("probe", rank=0, world_size=1, node="bench", instance_type=None, num_nodes=1)
    calls = 100_000
    observe_s = timeit.timeit(lambda: probe.observe_step(1, 2.0, 1e-3, 0.5, 0.1, 4096, 8), number=calls) / calls
    if hasattr(probe, "publish"):
        probe.publish()
        render_s = timeit.timeit(probe.exposition, number=1000) / 1000  # what a scrape does: snapshot + cost line
        publish_s = timeit.timeit(probe.publish, number=1000) / 1000  # once per log step, in the loop
    else:  # an older checkout: every scrape renders everything
        render_s = publish_s = timeit.timeit(lambda: generate_latest(probe.registry), number=1000) / 1000
    step_s = sum(off_times) / steps
    per_step = observe_s + render_s * step_s / args.scrape_interval
    print(f"publish (per log step): {publish_s * 1e3:.3f} ms; full render (what a scrape cost before): "
          f"{timeit.timeit(lambda: generate_latest(probe.registry), number=1000):.3f} ms")
    print(f"observe_step: {observe_s * 1e6:.2f} us/call; rank scrape render: {render_s * 1e3:.3f} ms; "
          f"step: {step_s * 1e3:.1f} ms -> estimated on/off ratio {step_s / (step_s + per_step):.5f}")


if __name__ == "__main__":
    main()
