"""Numeric precision for the device a rank drives, decided once at start.

    training.precision   auto (default) | bf16 | fp32
      auto -> bf16 on a CUDA GPU that has it (compute capability 8.0+: A100, A10G, H100, H200), else fp32
      bf16 on a GPU without it (V100: p3, p3dn) -> exit 2 with one line (fp32 there)
    on CUDA, whatever stays fp32 uses TF32 tensor cores (float32 matmul precision "high", cuDNN TF32)

bf16 is applied as autocast under DDP/Horovod, as FSDP2's mixed-precision policy, and as DeepSpeed's `bf16`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ddlc.errors import UserError

# Compute capability of the GPU models in the instance table (ddlc.infra.instance_types).
GPU_CAPABILITY = {"V100": (7, 0), "T4": (7, 5), "A100": (8, 0), "A10G": (8, 6), "L4": (8, 9), "H100": (9, 0),
                  "H200": (9, 0)}
BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class DeviceFacts:
    type: str  # "cuda" or "cpu"
    name: str = ""
    capability: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, device: torch.device) -> "DeviceFacts":
        if device.type != "cuda":
            return cls(device.type)
        return cls("cuda", torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device)))

    @classmethod
    def for_instance_type(cls, name: str) -> "DeviceFacts":
        """The GPU of an instance type from the instance table (for planning and tests: no GPU needed)."""
        from ddlc.infra.instance_types import gpu_instance_type

        spec = gpu_instance_type(name)
        return cls("cuda", f"{spec.gpu} ({spec.name})", GPU_CAPABILITY[spec.gpu])

    @property
    def has_bf16(self) -> bool:
        return self.type == "cuda" and self.capability >= BF16_CAPABILITY


def resolve_precision(configured: str, device: DeviceFacts) -> str:
    """`fp32` or `bf16` for this device; UserError when bf16 is asked of a GPU without it."""
    if configured == "auto":
        return "bf16" if device.has_bf16 else "fp32"
    if configured == "bf16" and device.type == "cuda" and not device.has_bf16:
        major, minor = device.capability
        raise UserError(f"training.precision=bf16: {device.name} (compute capability {major}.{minor}) has no bfloat16; "
                        "use training.precision=fp32 (what auto picks on this GPU)")
    return configured


def enable_tf32(device: torch.device) -> bool:
    """On CUDA, let fp32 matmuls and convolutions use TF32 tensor cores (~8x the fp32 rate on A100/H100); the
    loss of mantissa bits does not matter for training. Returns whether it was switched on."""
    if device.type != "cuda":
        return False
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return True


def configure(precision: str, device: torch.device, facts: Optional[DeviceFacts] = None) -> str:
    """Resolve `precision` for `device` and set the device's math modes; returns `fp32` or `bf16`."""
    resolved = resolve_precision(precision, facts or DeviceFacts.of(device))
    enable_tf32(device)
    return resolved
