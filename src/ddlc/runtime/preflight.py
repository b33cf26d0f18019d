"""Checks of a job that depend on its world size and its machine, run before any process group exists.

    Config + world size (+ this node's workers and device)
      -> batch plan: the global batch divides over the workers
      -> data: the path names files
      -> checkpoint URI and run directory: directories, or creatable ones
      -> memory: a lower-bound estimate of what each worker needs fits what this node has
    ok: the BatchPlan          bad: UserError naming the field, with the numbers

`ddlc train` and `ddlc launch` run it on the launching host, and every worker runs it before
`init_process_group`. Every rank reaches the same verdict from the same inputs, so a bad job ends with exit 2 on
every rank and one line from rank 0, instead of some ranks waiting in a rendezvous that never completes (gloo
connectFullMesh / ChildFailedError tracebacks from every rank).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ddlc.config.schema import Config
from ddlc.errors import UserError
from ddlc.runtime.data import BatchPlan, check_data_config, plan_batches


class MachineError(UserError):
    """Bad for this node only (memory): the first worker of each node that hits it says so, not just rank 0."""

    every_node = True


def worker_device(preference: str, local_rank: int) -> tuple[str, int]:
    """(device type, index) a worker will train on, without touching the process group (see select_device)."""
    if preference != "cpu":
        import torch

        if torch.cuda.is_available():
            return "cuda", local_rank % torch.cuda.device_count()
    return "cpu", 0


def local_device(preference: str) -> Optional[str]:
    """For `ddlc train` on this host: check CPU memory here; GPU memory is checked by each worker on its GPU."""
    return "cpu" if worker_device(preference, 0)[0] == "cpu" else None


def check_job(
    cfg: Config,
    world_size: int,
    local_workers: Optional[int] = None,
    device: Optional[str] = None,
    device_index: int = 0,
    paths: bool = True,
) -> BatchPlan:
    """Everything about `cfg` that can be known from the world size and this machine, before any collective.

    `device` None skips the memory check, and `paths` False the data and output paths: the launching host of a
    multi-node job is not where the workers run, and need not see their filesystems.
    """
    train = cfg.training
    plan = plan_batches(train.micro_batch_size, train.global_batch_size, train.grad_accum_steps, world_size)
    if paths:
        check_data_config(cfg.data)
        check_output_dirs(cfg)
    if device is not None:
        check_memory(cfg, plan, local_workers or world_size, device, device_index)
    return plan


# -- directories ----------------------------------------------------------------------------------------------
def check_output_dirs(cfg: Config) -> None:
    """monitoring.run_dir and a local checkpoint.uri must be directories (or creatable), never files."""
    check_directory("monitoring.run_dir", cfg.monitoring.run_dir)
    uri = cfg.checkpoint.uri
    if cfg.checkpoint.enabled and uri:
        from urllib.parse import urlparse

        parsed = urlparse(uri)
        if parsed.scheme.lower() in ("", "file") and not (parsed.scheme == "file" and parsed.netloc):
            check_directory("checkpoint.uri", parsed.path if parsed.scheme else uri)


def check_directory(field: str, path: str) -> None:
    """`path` is a directory, or every existing part of it is a writable directory."""
    target = Path(path).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise UserError(f"{field}: {path} is a file, not a directory")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{field}: {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{field}: {path}: no permission to write in {existing}")


# -- memory ---------------------------------------------------------------------------------------------------
BYTES_PER_PARAM = 16  # fp32 weights + gradients + AdamW's two moments (mixed precision keeps fp32 masters)


def parameter_count(cfg: Config) -> int:
    """The GPT's parameters (ddlc.runtime.model), from the config alone. Embedding and head are tied."""
    m = cfg.model
    vocab = m.vocab_size or _vocab_lower_bound(cfg)
    vocab = -(-vocab // m.pad_vocab_to) * m.pad_vocab_to  # the embedding's rows (model.pad_vocab_to)
    e = m.n_embd
    bias = 1 if m.bias else 0
    per_layer = 12 * e * e + (2 + 2 * bias) * e + bias * 9 * e  # qkv, proj, mlp up/down; 2 layer norms
    return m.n_layer * per_layer + vocab * e + m.block_size * e + (1 + bias) * e


def _vocab_lower_bound(cfg: Config) -> int:
    return {"synthetic": cfg.data.synthetic_vocab, "text": 256}.get(cfg.data.source, 2)


def memory_estimate(cfg: Config, plan: BatchPlan) -> dict[str, int]:
    """A lower bound of the bytes one worker needs, by part. Real use is higher (allocator, buffers, kernels)."""
    params = parameter_count(cfg)
    sharded = cfg.distributed.strategy in ("fsdp", "deepspeed")  # ZeRO-3 / FSDP2: the most sharding possible
    states = params * BYTES_PER_PARAM // (plan.world_size if sharded else 1)
    tokens = plan.micro_batch_size * cfg.model.block_size
    vocab = cfg.model.vocab_size or _vocab_lower_bound(cfg)
    # Logits and their gradient, plus a handful of n_embd-wide tensors kept per layer for backward.
    activations = tokens * 4 * (2 * vocab + 8 * cfg.model.n_layer * cfg.model.n_embd)
    # Each worker builds the synthetic corpus itself: uint16 tokens plus float64 draws while generating.
    corpus = cfg.data.synthetic_tokens * 10 if cfg.data.source == "synthetic" else 0
    return {"params": params, "states": states, "activations": activations, "corpus": corpus}


def available_memory(device: str, device_index: int = 0) -> Optional[tuple[int, str]]:
    """(bytes, what) this node can give: free memory of the GPU, or MemAvailable of the host; None if unknown."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device_index)
        return free, f"free on GPU {device_index}"
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available on this host"
    except OSError:
        pass
    return None


def check_memory(cfg: Config, plan: BatchPlan, local_workers: int, device: str, device_index: int = 0) -> None:
    need = memory_estimate(cfg, plan)
    model_bytes = need["states"] + need["activations"]
    if device == "cuda":
        host_bytes = need["corpus"] * local_workers
        device_have = available_memory("cuda", device_index)
        if device_have is not None and model_bytes > device_have[0]:
            raise _too_big(cfg, plan, need, model_bytes, device_have[0], device_have[1], per="this GPU")
    else:
        host_bytes = (model_bytes + need["corpus"]) * local_workers
    host_have = available_memory("cpu")
    if host_have is not None and host_bytes > host_have[0]:
        raise _too_big(cfg, plan, need, host_bytes, host_have[0], host_have[1],
                       per=f"{local_workers} worker{'s' if local_workers > 1 else ''}")


def _too_big(cfg: Config, plan: BatchPlan, need: dict, total: int, have: int, where: str, per: str) -> MachineError:
    m = cfg.model
    return MachineError(
        f"model: n_layer={m.n_layer} n_embd={m.n_embd} block_size={m.block_size} is too large for this machine: "
        f"{need['params'] / 1e6:,.1f}M parameters need at least {human_bytes(total)} for {per} "
        f"(weights, gradients, AdamW state: {human_bytes(need['states'])}; activations at micro_batch_size "
        f"{plan.micro_batch_size}: {human_bytes(need['activations'])}; corpus: {human_bytes(need['corpus'])} per "
        f"worker), but {human_bytes(have)} is {where}; shrink the model or training.micro_batch_size, or shard it "
        f"(distributed.strategy=fsdp) over more workers"
    )


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(count) < 1024 or unit == "PB":
            return f"{count:,.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:,.1f} PB"  # pragma: no cover - the loop always returns
