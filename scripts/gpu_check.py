#!/usr/bin/env python
"""`make gpu-check` (scripts/gpu_check.sh): the GPU-only proofs of issue #21, as one prepared script for a lent GPU.

    python scripts/gpu_check.py [--out DIR] [--only NAME,...]      (DIR default: $OUT, else gpu-check/)

Each check runs in its own process with its own timeout and prints one line, PASS/FAIL/SKIP NAME detail, most
important first; the report (report.json, report.txt and each check's log) goes to DIR. Exit 1 when any FAILs.
On a machine without a CUDA GPU every GPU check prints SKIP with the reason, so CI runs this script too.

  async-checkpoint   bf16 FSDP2 GPT big enough that the GPU runs behind the CPU; checkpoint every 3 steps, log
                     every 7; at each save a synchronized reference copy; every committed step loaded into a fresh
                     model and optimizer and compared bit for bit
  resume-reproduces  dropout 0.1, deterministic kernels: 12 steps straight vs 6 + resume + 6, losses and weights equal
  gpu-resume         DCP checkpoint (~1 GiB) loaded onto CUDA through DirectReader's pinned staging buffer: bit for
                     bit, all bytes staged; time against the CPU destination path and DCP's own reader
  throughput         tokens/s and MFU: DDP-bf16, FSDP2-bf16, fp32 with TF32 and without
  no-host-syncs      torch.cuda.set_sync_debug_mode("error") over non-log steps: DDP, FSDP2, DeepSpeed
  zero3-init         DeepSpeed ZeRO-3, bf16 on CUDA, built under zero.Init vs built whole: partitions on the GPU
                     at construction, the same initial weights, losses of 3 steps equal
  flash-attention    forward/backward with only the flash SDPA backend allowed; gradient accumulation == one batch
  nvml               the node agent's NVML readings against torch's own; one CUDA context in this process
  doctor             `ddlc doctor --json` on this node (runs on CPU too)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKS = [  # (name, timeout seconds): most important first; together under 8 minutes on one H200
    ("async-checkpoint", 150),
    ("resume-reproduces", 90),
    ("gpu-resume", 60),
    ("throughput", 150),
    ("no-host-syncs", 90),
    ("zero3-init", 90),
    ("flash-attention", 60),
    ("nvml", 45),
    ("doctor", 60),
]
GPU_FREE = {"doctor"}

# Dense peak FLOP/s per GPU (NVIDIA datasheets: A100 SXM, H100 SXM, H200 SXM; "dense" = without sparsity).
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12},
    "H100": {"bf16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}
PEAK_SOURCE = "NVIDIA H100/H200/A100 SXM datasheets, dense"


# -- helpers shared by the workers ------------------------------------------------------------------------------

# `--smoke-on-cpu` runs the workers' code paths on CPU with tiny models (a check of this script, not of a GPU).
SMOKE = os.environ.get("DDLC_GPU_CHECK_SMOKE") == "1"
DEVICE = "cpu" if SMOKE else "cuda"


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()

def small_config(*overrides: str):
    from ddlc.config.loader import load_config

    base = ["data.synthetic_vocab=256", "data.synthetic_tokens=2000000", "monitoring.progress=plain",
            "optimizer.warmup_steps=2", "training.log_interval=7"]
    return load_config(None, [*base, *overrides])


def gpt_125m(*overrides: str):
    if SMOKE:
        return small_config("model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64",
                            "training.micro_batch_size=4", *overrides)
    return small_config("model.n_layer=12", "model.n_head=12", "model.n_embd=768", "model.block_size=1024",
                        "training.micro_batch_size=8", *overrides)


def context():
    from ddlc.runtime.distributed import init_distributed

    return init_distributed(DEVICE, "auto")


def peak_flops(precision: str) -> tuple[float | None, str]:
    import torch

    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU"
    for model, peaks in PEAK_FLOPS.items():
        if model in name:
            return peaks[precision], f"{model} {precision} {peaks[precision] / 1e12:g} TFLOP/s ({PEAK_SOURCE})"
    return None, f"unknown: {name} is not in the peak table"


def flops_per_token(cfg, params: int) -> float:
    """6N for the weights plus attention (12 * layers * width * context), per token (PaLM appendix B)."""
    m = cfg.model
    return 6 * params + 12 * m.n_layer * m.n_embd * m.block_size


def full_state(model, optimizer):
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer,
                                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    flat = {f"model.{k}": v for k, v in model_state.items()}
    for key, state in optim_state.get("state", {}).items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                flat[f"optim.{key}.{name}"] = value
    return {k: v.detach().cpu().clone() for k, v in flat.items()}


# -- the checks (each runs in its own process: `gpu_check.py --worker NAME`) ---------------------------------------

def check_async_checkpoint(out: Path) -> str:
    import torch
    import torch.distributed.checkpoint as dcp

    from ddlc.checkpoint.state import load_model_and_optimizer_state, model_and_optimizer_state
    from ddlc.runtime.model import GPT
    from ddlc.runtime.optim import build_optimizer
    from ddlc.runtime.parallel import wrap_model
    from ddlc.runtime.trainer import Trainer

    cfg = gpt_125m("distributed.strategy=fsdp", "training.precision=bf16", "training.max_steps=20",
                   "checkpoint.interval_steps=3", "checkpoint.keep_last=20", "checkpoint.async_save=true",
                   f"monitoring.run_dir={out}", "monitoring.run_name=async")
    references: dict[int, dict] = {}

    class Recording(Trainer):
        def save_checkpoint(self, blocking: bool) -> None:
            super().save_checkpoint(blocking)
            # Taken after save() returned (the stager may still be copying): parameters and moments do not change
            # until the next optimizer step, which waits for the copy. Synchronized, so it is the step's true state.
            sync()
            references[self.state.step] = full_state(self.model, self.optimizer)

    ctx = context()
    trainer = Recording(cfg, ctx)
    trainer.fit()
    store = trainer.checkpointer.store
    compared = []
    for step, reference in sorted(references.items()):
        fresh = wrap_model(GPT(cfg.model), ctx, "fsdp", "bf16")
        optimizer = build_optimizer(fresh, cfg.optimizer)
        state = model_and_optimizer_state(fresh, optimizer)
        dcp.load(state, checkpoint_id=store.url(f"step-{step:08d}"))
        load_model_and_optimizer_state(fresh, optimizer, state)
        loaded = full_state(fresh, optimizer)
        different = [k for k, v in reference.items() if k not in loaded or not torch.equal(loaded[k], v)]
        if different:
            raise AssertionError(f"step {step}: {len(different)} tensors differ from the synchronized copy, "
                                 f"e.g. {different[:3]}")
        compared.append(step)
    if len(compared) < 5:
        raise AssertionError(f"only steps {compared} were saved")
    return f"steps {compared}: every parameter and optimizer moment bit-identical to the synchronized copy"


def check_resume_reproduces(out: Path) -> str:
    import torch

    from ddlc.runtime.trainer import Trainer

    from torch.nn.attention import SDPBackend, sdpa_kernel

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    with sdpa_kernel([SDPBackend.MATH]):  # flash attention's backward is not deterministic
        return _resume_reproduces(out)


def _resume_reproduces(out: Path) -> str:
    import torch

    from ddlc.runtime.trainer import Trainer

    size = ["model.n_layer=1", "model.n_embd=64", "model.block_size=32"] if SMOKE else \
        ["model.n_layer=4", "model.n_embd=256", "model.block_size=256"]
    common = [*size, "model.n_head=4", "model.dropout=0.1", "training.micro_batch_size=8", "training.max_steps=12", "training.log_interval=1",
              "training.precision=bf16", "checkpoint.interval_steps=100", f"monitoring.run_dir={out}"]
    ctx = context()
    straight = Trainer(small_config(*common, "monitoring.run_name=straight", f"checkpoint.uri={out}/a"), ctx)
    straight.fit()
    first = Trainer(small_config(*common, "monitoring.run_name=split", f"checkpoint.uri={out}/b",
                                 "training.stop_at_step=6"), ctx)
    first.fit()
    second = Trainer(small_config(*common, "monitoring.run_name=split", f"checkpoint.uri={out}/b"), ctx)
    second.fit()
    if second.resumed_from is None:
        raise AssertionError("the second half did not resume")
    losses = {}
    for name in ("straight", "split"):
        records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = {r["step"]: r["loss"] for r in records if "loss" in r}
    tail = range(7, 13)
    if [losses["straight"][s] for s in tail] != [losses["split"][s] for s in tail]:
        raise AssertionError(f"losses after the resume differ: {[losses['straight'][s] for s in tail]} vs "
                             f"{[losses['split'][s] for s in tail]}")
    a, b = straight.full_state_dict(), second.full_state_dict()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    if different:
        raise AssertionError(f"final weights differ in {different[:3]}")
    return "steps 7-12 losses and final weights identical (dropout 0.1, CUDA RNG restored)"


def check_gpu_resume(out: Path) -> str:
    """Finding 8 of #21: resume onto the GPU keeps the fast direct read (pinned host buffer, one copy)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    from ddlc.checkpoint.direct_read import DirectReader

    count, numel = (4, 1 << 19) if SMOKE else (64, 1 << 22)  # 64 x 16 MiB fp32 = 1 GiB
    generator = torch.Generator().manual_seed(0)
    state = {f"t{i}": torch.randn(numel, generator=generator) for i in range(count)}
    path = out / "ckpt"
    dcp.save(state, checkpoint_id=str(path), no_dist=True)
    total = count * numel * 4

    def load(reader, device: str) -> tuple[dict, float]:
        blank = {k: torch.empty(numel, device=device) for k in state}
        sync()
        started = time.perf_counter()
        dcp.load(blank, checkpoint_id=str(path), storage_reader=reader, no_dist=True)
        sync()
        return blank, time.perf_counter() - started

    load(DirectReader(str(path)), "cpu")  # warm the page cache: every timing below reads from memory
    _, cpu_s = load(DirectReader(str(path)), "cpu")
    reader = DirectReader(str(path), stage_cpu=SMOKE)
    on_device, device_s = load(reader, DEVICE)
    _, dcp_s = load(FileSystemReader(str(path)), DEVICE)
    different = [k for k in state if not torch.equal(on_device[k].cpu(), state[k])]
    if different:
        raise AssertionError(f"loaded tensors differ from the saved ones: {different[:3]}")
    if reader.staged_bytes != total:
        raise AssertionError(f"{reader.staged_bytes} of {total} bytes went through the staging buffer")
    gib = total / 2**30
    return (f"{gib:.2f} GiB onto {DEVICE} bit for bit, all staged: {gib / device_s:.2f} GiB/s (CPU destinations "
            f"{gib / cpu_s:.2f} GiB/s, DCP's reader onto {DEVICE} {gib / dcp_s:.2f} GiB/s; from the page cache)")


def check_throughput(out: Path) -> str:
    import torch

    from ddlc.runtime.trainer import Trainer

    rows = []
    ctx = context()
    for label, strategy, precision, tf32 in (("DDP bf16", "ddp", "bf16", True), ("FSDP2 bf16", "fsdp", "bf16", True),
                                            ("fp32 + TF32", "ddp", "fp32", True), ("fp32, no TF32", "ddp", "fp32", False)):
        cfg = gpt_125m(f"distributed.strategy={strategy}", f"training.precision={precision}",
                       "training.max_steps=1000", "checkpoint.enabled=false", "training.log_interval=1000",
                       f"monitoring.run_dir={out}", f"monitoring.run_name=tp-{strategy}-{precision}-{int(tf32)}")
        trainer = Trainer(cfg, ctx)
        if not tf32:
            torch.set_float32_matmul_precision("highest")
            torch.backends.cudnn.allow_tf32 = False
        for _ in range(5):
            trainer.train_step()
        sync()
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        steps = 20
        for _ in range(steps):
            trainer.train_step()
        sync()
        seconds = time.perf_counter() - started
        tokens = steps * trainer.tokens_per_step / seconds
        params = sum(p.numel() for p in trainer.model.parameters())
        peak, source = peak_flops(precision if precision == "bf16" else ("tf32" if tf32 else "fp32"))
        mfu = f"{flops_per_token(cfg, params) * tokens / peak:.1%}" if peak else "unknown"
        rows.append({"run": label, "tokens_per_s": round(tokens), "mfu": mfu, "peak": source,
                     "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None,
                     "params": params})
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
        del trainer
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    (out / "throughput.json").write_text(json.dumps(rows, indent=2))
    return "; ".join(f"{r['run']}: {r['tokens_per_s']:,} tok/s, MFU {r['mfu']}" for r in rows)


def check_no_host_syncs(out: Path) -> str:
    import torch

    from ddlc.runtime.trainer import Trainer

    ctx = context()
    done, problems = [], []
    strategies = ["ddp", "fsdp"]
    try:
        import deepspeed  # noqa: F401

        strategies.append("deepspeed")
    except ImportError:
        pass
    for strategy in strategies:
        cfg = gpt_125m(f"distributed.strategy={strategy}", "training.precision=bf16", "training.max_steps=1000",
                       "checkpoint.enabled=false", "training.log_interval=1000", "model.n_layer=4",
                       f"monitoring.run_dir={out}", f"monitoring.run_name=sync-{strategy}")
        trainer = Trainer(cfg, ctx)
        for _ in range(3):
            trainer.train_step()
        sync()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):  # non-log steps: what the loop does between log steps
                trainer.train_step()
                trainer.preemption.should_stop()
            done.append(strategy)
        except RuntimeError as error:
            problems.append(f"{strategy}: {str(error).splitlines()[0][:200]}")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        del trainer
    if problems:
        raise AssertionError("; ".join(problems))
    return f"no host sync in 5 non-log steps under {', '.join(done)}"


def check_zero3_init(out: Path) -> str:
    import torch

    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return "DeepSpeed is not installed: nothing to check"
    from ddlc.runtime.data import plan_batches
    from ddlc.runtime.engines.deepspeed_engine import DeepSpeedEngine
    from ddlc.runtime.model import GPT

    ctx = context()
    cfg = gpt_125m("distributed.strategy=deepspeed", "distributed.deepspeed.zero_stage=3", "model.n_layer=4",
                   "training.precision=bf16")
    cfg.model.vocab_size = 256
    plan, built, losses, states = plan_batches(4, 4, None, ctx.world_size), {}, {}, {}
    tokens = torch.randint(0, 256, (4, cfg.model.block_size + 1), generator=torch.Generator().manual_seed(0))
    for zero_init in (True, False):
        cfg.distributed.deepspeed.zero_init = zero_init
        torch.manual_seed(cfg.training.seed)

        def build():
            model = GPT(cfg.model)
            built[zero_init] = [(p.numel(), getattr(p, "ds_tensor", p).device.type) for p in model.parameters()]
            return model

        engine = DeepSpeedEngine(cfg, ctx, build, plan, total_steps=10)
        states[zero_init] = {k: v.float().cpu() for k, v in engine.full_state_dict().items()}
        torch.manual_seed(1)
        losses[zero_init] = [engine.train_step([(tokens[:, :-1], tokens[:, 1:])], lambda loss, norm: True)[0].item()
                             for _ in range(3)]
        del engine
    if not all(n == 0 and device == DEVICE for n, device in built[True]):
        raise AssertionError(f"zero.Init left full parameters or partitions off {DEVICE}: {built[True][:4]}")
    if states[True].keys() != states[False].keys() or any(not torch.equal(v, states[False][k])
                                                          for k, v in states[True].items()):
        raise AssertionError("initial weights differ between zero.Init and the whole build")
    if losses[True] != losses[False]:
        raise AssertionError(f"losses differ: zero.Init {losses[True]} vs whole {losses[False]}")
    return f"partitioned at construction on {DEVICE}, same initial weights, losses equal: {losses[True]}"


def check_flash_attention(out: Path) -> str:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ddlc.runtime.model import GPT
    from ddlc.runtime.trainer import Trainer

    cfg = gpt_125m("model.n_layer=2")
    cfg.model.vocab_size = 256
    if DEVICE == "cuda":  # the smoke run on CPU has no flash kernel: accumulation only
        model = GPT(cfg.model).cuda()
        tokens = torch.randint(0, 256, (4, 1024), device="cuda")
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(tokens, tokens)
        loss.backward()
        sync()

    # Gradient accumulation: 4 micro-batches of 4 give the gradients of one batch of 16 (fp32, no TF32). Compared
    # before the optimizer (Adam's first step is ~lr * sign(g), which would amplify rounding in tiny gradients).
    ctx = context()
    grads = []
    for micro in (16, 4):
        cfg = small_config("model.n_layer=2", "model.n_embd=128", "model.block_size=128", "training.precision=fp32",
                           f"training.micro_batch_size={micro}", "training.global_batch_size=16",
                           "training.max_steps=1", "checkpoint.enabled=false", "optimizer.warmup_steps=0",
                           f"monitoring.run_dir={out}", f"monitoring.run_name=accum-{micro}")
        trainer = Trainer(cfg, ctx)
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        accum = trainer.plan.grad_accum_steps
        for micro_step in range(accum):  # what Trainer.train_step does before clipping and the optimizer
            inputs, targets = trainer.sampler.batch(0, micro_step, ctx.rank)
            _, loss = trainer.model(inputs.to(DEVICE), targets.to(DEVICE))
            (loss / accum).backward()
        grads.append({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()})
    torch.set_float32_matmul_precision("high")
    worst = max(((grads[0][k] - grads[1][k]).abs().max() / grads[0][k].abs().max().clamp_min(1e-12)).item()
                for k in grads[0])
    if worst > 1e-4:
        raise AssertionError(f"accumulated gradients differ from one batch's by up to {worst:.2g} (relative)")
    return f"flash SDPA forward/backward ran; accumulated vs one-batch gradients: max relative difference {worst:.2g}"


def check_nvml(out: Path) -> str:
    import torch

    from ddlc.monitor.gpu import GpuCollector

    torch.cuda.init()
    block = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")  # 2 GiB torch knows it holds
    torch.cuda.synchronize()
    collector = GpuCollector("gpu-check", watch_xid=False)
    try:
        if not collector.available:
            raise AssertionError("NVML is not available to the node agent's collector")
        samples = {}
        for family in collector.collect():
            for sample in family.samples:
                if sample.labels.get("gpu", "0") == "0":
                    samples[sample.name] = sample.value
        used = samples.get("ddlc_gpu_memory_used_bytes", 0)
        total = samples.get("ddlc_gpu_memory_total_bytes", 0)
        free, torch_total = torch.cuda.mem_get_info()
        if abs(total - torch_total) > 0.02 * torch_total:
            raise AssertionError(f"memory total: NVML {total / 2**30:.1f} GiB, torch {torch_total / 2**30:.1f} GiB")
        if used < torch.cuda.memory_reserved():
            raise AssertionError(f"NVML memory used {used / 2**30:.2f} GiB < torch reserved "
                                 f"{torch.cuda.memory_reserved() / 2**30:.2f} GiB")
        for name in ("ddlc_gpu_power_watts", "ddlc_gpu_temperature_celsius"):
            if not samples.get(name):
                raise AssertionError(f"{name} is missing or zero")
        nvml = collector._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(0)
        running = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        mine = [p for p in running if p.pid == os.getpid()]
        if not mine and len(running) == 1:
            mine = running  # in a container NVML reports host pids: the only context on the GPU is ours
        if len(mine) != 1:
            raise AssertionError(f"{len(mine)} CUDA contexts for this process (pids {[p.pid for p in running]}; "
                                 "one expected)")
    finally:
        collector.close()
        del block
    return (f"NVML used {used / 2**30:.2f} GiB >= torch reserved; total {total / 2**30:.1f} GiB matches torch; "
            f"power {samples['ddlc_gpu_power_watts']:.0f} W, {samples['ddlc_gpu_temperature_celsius']:.0f} C; "
            "one context")


def check_doctor(out: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "ddlc", "doctor", "--json", "--min-free-gb", "1"],
                          capture_output=True, text=True, timeout=55)
    (out / "doctor.json").write_text(proc.stdout)
    report = json.loads(proc.stdout)
    failed = [c for c in report["checks"] if c["status"] == "FAIL"]
    if failed:
        raise AssertionError("; ".join(f"{c['name']}: {c['detail']}" for c in failed))
    return ", ".join(f"{n} {s}" for s, n in report["counts"].items())


WORKERS = {name: globals()["check_" + name.replace("-", "_")] for name, _ in CHECKS}


# -- driver -----------------------------------------------------------------------------------------------------

def cuda_reason() -> str | None:
    """None when a CUDA GPU is usable, else why not."""
    code = "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 3)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    return "no CUDA GPU (torch.cuda.is_available() is False)" if proc.returncode == 3 else proc.stderr.strip()[-200:]


def run_worker(name: str, out: Path) -> None:
    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    try:
        detail = WORKERS[name](directory)
        result = {"status": "PASS", "detail": detail}
    except Exception as error:  # noqa: BLE001 - every failure is one line in the report
        import traceback

        traceback.print_exc()
        result = {"status": "FAIL", "detail": f"{type(error).__name__}: {' '.join(str(error).split())[:400]}"}
    (directory / "result.json").write_text(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # no teardown races in NCCL/gloo destructors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check")
    parser.add_argument("--only", default="", help="comma-separated check names")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--smoke-on-cpu", action="store_true", help="run the GPU checks' code on CPU with tiny "
                        "models (checks this script, proves nothing about a GPU; nvml and no-host-syncs skip)")
    args = parser.parse_args()
    out = Path(args.out).absolute()
    if args.worker:
        run_worker(args.worker, out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = [n for n in args.only.split(",") if n] or [n for n, _ in CHECKS]
    unknown = set(wanted) - set(WORKERS)
    if unknown:
        print(f"error: --only {','.join(sorted(unknown))}: choose from {', '.join(WORKERS)}", file=sys.stderr)
        return 2
    no_gpu = None if args.smoke_on_cpu else cuda_reason()
    cuda_only = {"nvml", "no-host-syncs"} if args.smoke_on_cpu else set()
    if no_gpu:
        print(f"gpu-check: {no_gpu}: GPU checks are skipped, the rest run", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4"),
           **({"DDLC_GPU_CHECK_SMOKE": "1"} if args.smoke_on_cpu else {})}
    results = []
    for name, timeout in CHECKS:
        if name not in wanted:
            continue
        started = time.perf_counter()
        if no_gpu and name not in GPU_FREE:
            result = {"status": "SKIP", "detail": no_gpu}
        elif name in cuda_only:
            result = {"status": "SKIP", "detail": "needs CUDA even in the smoke run"}
        else:
            log = out / name / "log.txt"
            log.parent.mkdir(parents=True, exist_ok=True)
            (out / name / "result.json").unlink(missing_ok=True)
            with open(log, "w") as handle:
                try:
                    subprocess.run([sys.executable, __file__, "--worker", name, "--out", str(out)], cwd=REPO,
                                   env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
                    result = json.loads((out / name / "result.json").read_text())
                except subprocess.TimeoutExpired:
                    result = {"status": "FAIL", "detail": f"timed out after {timeout} s (log: {log})"}
                except (OSError, ValueError):
                    result = {"status": "FAIL", "detail": f"the check died without a result (log: {log})"}
        result.update(name=name, seconds=round(time.perf_counter() - started, 1))
        results.append(result)
        print(f"{result['status']} {name:<18} {result['detail']} ({result['seconds']} s)", flush=True)
    (out / "report.json").write_text(json.dumps(results, indent=2))
    (out / "report.txt").write_text("".join(f"{r['status']} {r['name']} {r['detail']}\n" for r in results))
    failed = [r["name"] for r in results if r["status"] == "FAIL"]
    print(f"gpu-check: {sum(r['status'] == 'PASS' for r in results)} PASS, {len(failed)} FAIL, "
          f"{sum(r['status'] == 'SKIP' for r in results)} SKIP; report in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
