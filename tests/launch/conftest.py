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


@pytest.fixture(scope="session")
def loopback_hosts():
    """Two sshd "hosts" on 127.0.0.2 and 127.0.0.3 inside one namespace (see TwoHosts)."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    network = TwoHosts(loopback=True)
    yield network
    network.close()
