"""`training.compile: true`: torch.compile the model in place, or say clearly why not and train eager.

    probe: compile and run a two-op function on the training device (seconds; catches a missing C++ compiler on
           CPU, a missing Triton on GPU, an unsupported Python) -> warning + eager when it fails
    model: `module.compile()` in place, so parameter names, and therefore checkpoints, are the same as eager;
           dynamo's suppress_errors makes a graph it cannot compile fall back to eager instead of failing the step
"""

from __future__ import annotations

from typing import Callable, Optional

import torch


def compile_unavailable(device: torch.device) -> Optional[str]:
    """None when torch.compile works on `device`, else the reason in one line."""
    try:
        probe = torch.compile(lambda x: x * 2 + 1)
        probe(torch.ones(8, device=device))
    except Exception as error:  # noqa: BLE001 - any failure means: not here
        first = (str(error).strip().splitlines() or [""])[0]
        return f"{type(error).__name__}: {first[:200]}"
    return None


def compile_in_place(module: torch.nn.Module, device: torch.device, warn: Callable[[str], None]) -> bool:
    """Compile `module` in place when torch.compile works here; otherwise warn and leave it eager."""
    reason = compile_unavailable(device)
    if reason is not None:
        warn(f"training.compile: torch.compile cannot run on this platform ({reason}); training runs eager")
        return False
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a graph that fails to compile runs eager, with dynamo's warning
    module.compile()
    return True
