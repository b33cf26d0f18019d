"""Session-wide test plumbing: this checkout's code everywhere, the shared hosts and Slurm cluster, and which tests
share a pytest-xdist worker.

With ddlc installed editable from another tree (a second worktree, an older clone), `import ddlc` would silently
resolve to that tree. pytest puts `src` first on sys.path (pyproject `pythonpath`); exporting the same path in
PYTHONPATH carries it into torchrun workers, `ddlc` console scripts and ssh'd namespace hosts, which inherit it.

`make test` runs two pytest-xdist workers (`-n 2 --dist loadgroup`): most multi-process tests wait on rendezvous,
ssh or Slurm more than they compute, so one worker alone leaves a core idle. Session and module fixtures are made
once per worker, so tests that share an expensive one are kept on one worker (`worker_group`):

    tests using `hosts`/`slurm` --> "namespace-hosts"  (one set of namespaces, one Slurm cluster, scheduled first:
                                                       it is the longest group)
    tests/infra, CDK synth users --> "cdk-synth"        (tests.infra.conftest caches each synth per process)
    every other test            --> its own file        (module fixtures: one shared run per file)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HOSTS_GROUP = "namespace-hosts"
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


def pytest_sessionstart(session: pytest.Session) -> None:
    """Screenshots and reports of the last run only: cleared once, by the controller (or the only process), never
    by an xdist worker while the other one writes there."""
    if not hasattr(session.config, "workerinput"):
        from tests.dashboards.conftest import ARTIFACTS

        shutil.rmtree(ARTIFACTS, ignore_errors=True)


def worker_group(item: pytest.Item) -> str:
    if {"hosts", "slurm"} & set(item.fixturenames):
        return HOSTS_GROUP
    from tests.infra.conftest import synth

    path = Path(str(item.path)).resolve()
    if path.is_relative_to(REPO / "tests" / "infra") or getattr(getattr(item, "module", None), "synth", None) is synth:
        return "cdk-synth"
    return str(path.relative_to(REPO))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the group into the test's scope
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(worker_group(item)))
    # The longest group first (make test passes --no-loadscope-reorder, so scopes go out in this order): the other
    # worker runs everything else meanwhile. Stable: every worker must collect the same order.
    items.sort(key=lambda item: worker_group(item) != HOSTS_GROUP)
