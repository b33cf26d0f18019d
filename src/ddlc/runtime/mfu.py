"""Model FLOPs utilization: the share of the GPUs' peak the training actually uses.

    model FLOPs per token = 6 N (forward + backward through N weights) + 12 * layers * width * context (attention)
    MFU = FLOPs per token * tokens/s (whole job) / (peak FLOP/s per GPU * GPUs)

The peak comes from a small table of dense (no sparsity) figures for the precision the run uses — bf16, or TF32
for fp32 on CUDA (ddlc enables it) — from NVIDIA's A100/H100/H200 SXM datasheets. A GPU not in the table gives
MFU "unknown" with the reason, never a made-up peak; so does a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

PEAK_SOURCE = "NVIDIA A100/H100/H200 SXM datasheets, dense"
# Checked in this order against the device name ("NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB").
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp32": 494.5e12},  # fp32 runs use TF32 tensor cores
    "H100": {"bf16": 989e12, "fp32": 494.5e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
}


def flops_per_token(n_params: int, n_layer: int, n_embd: int, block_size: int) -> float:
    """PaLM (appendix B) accounting: 6N plus the attention score/value matmuls."""
    return 6 * n_params + 12 * n_layer * n_embd * block_size


@dataclass(frozen=True)
class Peak:
    flops: Optional[float]  # per GPU; None: unknown
    source: str  # where the number comes from, or why it is unknown


def peak_for(device_name: Optional[str], precision: str) -> Peak:
    if not device_name:
        return Peak(None, "unknown: not a CUDA GPU")
    for model, peaks in PEAK_FLOPS.items():
        if model in device_name:
            kind = "bf16" if precision == "bf16" else "fp32"
            label = "bf16" if kind == "bf16" else "TF32"
            return Peak(peaks[kind], f"{model} {label} {peaks[kind] / 1e12:g} TFLOP/s ({PEAK_SOURCE})")
    return Peak(None, f"unknown: {device_name} is not in ddlc's peak table (ddlc/runtime/mfu.py)")


class MfuMeter:
    """MFU of a job from its tokens/s; `ratio()` is None when the peak is unknown."""

    def __init__(self, per_token: float, peak: Peak, gpus: int):
        self.per_token, self.peak, self.gpus = per_token, peak, max(gpus, 1)

    @classmethod
    def for_run(cls, model_cfg, n_params: int, device, precision: str, world_size: int) -> "MfuMeter":
        name = None
        if getattr(device, "type", None) == "cuda":
            import torch

            name = torch.cuda.get_device_name(device)
        per_token = flops_per_token(n_params, model_cfg.n_layer, model_cfg.n_embd, model_cfg.block_size)
        return cls(per_token, peak_for(name, precision), world_size)

    def ratio(self, tokens_per_s: float) -> Optional[float]:
        if self.peak.flops is None or tokens_per_s <= 0:
            return None
        return self.per_token * tokens_per_s / (self.peak.flops * self.gpus)
