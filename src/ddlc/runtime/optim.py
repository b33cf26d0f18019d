"""AdamW (no weight decay on 1-D params: norms and biases; fused on CUDA) with linear warmup and cosine/linear decay."""

from __future__ import annotations

import math

import torch

from ddlc.config.schema import OptimizerConfig


def lr_multiplier(step: int, cfg: OptimizerConfig, total_steps: int) -> float:
    """Linear warmup to 1, then decay to `min_lr_ratio` at `total_steps` (cosine, linear or none)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant":
        return 1.0
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    if cfg.decay == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            # A ZeRO-3 partition (deepspeed.zero.Init) is an empty 1-D tensor here; ds_shape is its real shape.
            (decay if len(getattr(param, "ds_shape", param.shape)) >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **adamw_implementation(decay + no_decay))


def adamw_implementation(params) -> dict:
    """fused (one kernel for the whole update) when every parameter is on CUDA; foreach (batched ops) otherwise."""
    if params and all(p.device.type == "cuda" for p in params):
        return {"fused": True}
    return {"foreach": True}


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg, total_steps))
