"""A dispatch mode that records the largest tensor any factory op creates on a real device (not meta): the
meta-init (FSDP2) and zero.Init (ZeRO-3) workers use it to show no rank ever built the whole model."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LargestAllocation(TorchDispatchMode):
    """The most elements any single new tensor (a factory op's output) had on a real device."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.empty, torch.ops.aten.empty_strided, torch.ops.aten.zeros,
                                   torch.ops.aten.ones, torch.ops.aten.full, torch.ops.aten.empty_like):
            if isinstance(out, torch.Tensor) and out.device.type != "meta":
                self.largest = max(self.largest, out.numel())
        return out
