import pytest

from tests.launch.hosts import TwoHosts, netns_unavailable


@pytest.fixture(scope="session")
def hosts():
    """Two hosts (network namespaces with their own sshd), shared by every multi-host test and always removed."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    network = TwoHosts()
    yield network
    network.close()

