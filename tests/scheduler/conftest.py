import pytest

from tests.scheduler.cluster import SlurmCluster, slurm_unavailable


@pytest.fixture(scope="session")
def slurm(hosts):
    """One real Slurm cluster per session on the namespace hosts (slurmctld on a, slurmd on b and c); always
    stopped and removed."""
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(hosts)
    yield cluster
    cluster.close()
