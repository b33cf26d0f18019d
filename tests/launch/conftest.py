import pytest

from tests.launch.hosts import Hosts, netns_unavailable


@pytest.fixture(scope="session")
def hosts():
    """Three hosts (network namespaces with their own sshd), shared by every multi-host test and always removed."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    network = Hosts()
    yield network
    network.close()

