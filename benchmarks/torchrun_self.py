"""Benchmarks that measure several ranks start themselves again under torchrun (`python benchmarks/X.py` works)."""

import os
import subprocess
import sys


def relaunch_under_torchrun(script: str, nproc: int) -> int:
    """Run `script` with this process's arguments as `nproc` torchrun workers; one thread each unless
    OMP_NUM_THREADS says otherwise (ranks share the machine's cores)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script,
           *sys.argv[1:]]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.call(cmd, env=env)
