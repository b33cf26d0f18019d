"""Session-wide test plumbing: this checkout's code everywhere, the shared hosts and Slurm cluster, and which tests
share a pytest-xdist worker.

With ddlc installed editable from another tree (a second worktree, an older clone), `import ddlc` would silently
resolve to that tree. pytest puts `src` first on sys.path (pyproject `pythonpath`); exporting the same path in
PYTHONPATH carries it into torchrun workers, `ddlc` console scripts and ssh'd namespace hosts, which inherit it.

`make test` runs two pytest-xdist workers (`-n 2 --dist loadgroup`): most multi-process tests wait on rendezvous,
ssh or Slurm more than they compute, so one worker alone leaves a core idle. Session and module fixtures are made
once per worker, so tests that share an expensive one are kept on one worker (tests/worker_groups.py, which also
makes xdist's grouping work under pytest 9); the `moto` server is cheap enough to start once per worker.
"""

from __future__ import annotations

import os
import shutil
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
def moto():
    """ONE moto server (tests.support.MotoServer on 127.0.0.1) per session -- per xdist worker --, started by the
    first test that asks for it, so a run without S3/EC2/CloudFormation tests starts none. Its state is global and
    never reset (POST /moto-api/reset would wipe another test's data mid-run): every user keeps its data apart by
    name (its own bucket, stack, group, namespace) and filters by what it created, never assuming an empty
    account. Only a test that kills its endpoint on purpose starts its own."""
    from tests.support import MotoServer

    server = MotoServer()
    yield server
    server.stop()


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


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("dist", "no") == "loadgroup" and not hasattr(config, "workerinput"):
        import tempfile

        from tests.worker_groups import GROUPS_DIR_ENV

        # Inherited by the workers, which the controller starts after this hook.
        os.environ[GROUPS_DIR_ENV] = config._ddlc_groups_dir = tempfile.mkdtemp(prefix="ddlc-xdist-groups-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if getattr(config, "_ddlc_groups_dir", None):
        shutil.rmtree(config._ddlc_groups_dir, ignore_errors=True)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getoption("dist", "no") == "loadgroup":
        from tests.worker_groups import make_scheduler

        return make_scheduler(config, log)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from tests.worker_groups import HOSTS_GROUP, group_of

    groups = {item.nodeid: group_of(item, REPO) for item in items}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    # The longest group first (make test passes --no-loadscope-reorder, so work units go out in this order): the
    # other worker runs everything else meanwhile. Stable: every worker must collect the same order.
    items.sort(key=lambda item: groups[item.nodeid] != HOSTS_GROUP)


@pytest.hookimpl(trylast=True)  # after every plugin has added its markers
def pytest_collection_finish(session: pytest.Session) -> None:
    worker = getattr(session.config, "workerinput", None)
    if worker is not None:
        from tests.worker_groups import write_groups

        write_groups(worker["workerid"], session.items)
