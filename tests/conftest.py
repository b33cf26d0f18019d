"""Make every test, and every process a test starts, run this checkout's code.

With ddlc installed editable from another tree (a second worktree, an older clone), `import ddlc` would silently
resolve to that tree. pytest puts `src` first on sys.path (pyproject `pythonpath`); exporting the same path in
PYTHONPATH carries it into torchrun workers, `ddlc` console scripts and ssh'd namespace hosts, which inherit it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

_rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != SRC]
os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), *_rest])


@pytest.fixture(scope="session", autouse=True)
def _this_checkout_is_under_test():
    import ddlc

    here = Path(ddlc.__file__).resolve()
    assert here.is_relative_to(SRC), f"tests import ddlc from {here}, not from this checkout's {SRC}"
    child = subprocess.run([sys.executable, "-c", "import ddlc; print(ddlc.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd="/")
    assert Path(child.stdout.strip()).resolve().is_relative_to(SRC), (
        f"a subprocess imports ddlc from {child.stdout.strip()!r} {child.stderr[-500:]}, not from {SRC}")


@pytest.fixture(scope="session")
def hosts():
    """Three hosts (network namespaces with their own sshd, tests/launch/hosts.py), shared by every multi-host test
    (tests/launch, tests/scheduler, tests/monitor) and always removed."""
    from tests.launch.hosts import Hosts, netns_unavailable

    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    network = Hosts()
    yield network
    network.close()


@pytest.fixture(scope="session")
def slurm(hosts):
    """One real Slurm cluster per session on the namespace hosts (slurmctld on a, slurmd on b and c), shared by
    tests/scheduler and tests/monitor; always stopped and removed. A test that changes it (jobs, drained nodes,
    slurm.conf) puts it back to idle before it ends."""
    from tests.scheduler.cluster import SlurmCluster, slurm_unavailable

    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(hosts)
    yield cluster
    cluster.close()
