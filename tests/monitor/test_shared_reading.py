"""docs/metrics.md: scrapes that arrive within 0.5 s of each other share one reading, so many scrapers cost like
one. The agent's endpoint renders through CachedExposition; here a collector counts how often it is read."""

from __future__ import annotations

import threading
import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from ddlc.monitor.server import CachedExposition


class CountingCollector:
    """Every collection is one "reading"; the first one holds until released, so scrapers pile up behind it."""

    def __init__(self) -> None:
        self.readings = 0
        self.release = threading.Event()

    def collect(self):
        self.readings += 1
        self.release.wait(timeout=60)
        yield GaugeMetricFamily("ddlc_test_readings", "readings so far", value=self.readings)


def test_concurrent_scrapes_share_one_reading():
    collector = CountingCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    render = CachedExposition(registry, max_age_s=3600)  # the age is not what is tested here: sharing is
    bodies: list[bytes] = []
    threads = [threading.Thread(target=lambda: bodies.append(render())) for _ in range(20)]
    for thread in threads:
        thread.start()
    while collector.readings == 0:  # the first scraper is inside the collection; the others wait on it
        threading.Event().wait(0.01)
    collector.release.set()
    for thread in threads:
        thread.join(timeout=60)
    assert collector.readings == 1 and len(bodies) == 20
    assert len(set(bodies)) == 1 and b"ddlc_test_readings 1.0" in bodies[0]


def test_an_older_reading_is_replaced():
    collector = CountingCollector()
    collector.release.set()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    render = CachedExposition(registry, max_age_s=0.0)  # every reading is already too old for the next scrape
    render(), render()
    assert collector.readings == 2


def test_scrapes_of_the_agent_that_arrive_together_share_a_reading(tmp_path):
    """Through the real agent and its HTTP server: 12 scrapes arrive while the first reading is held. Without
    sharing that is 12 readings; with it one (a few if the loaded machine lets 0.5 s pass before the queued ones
    run: waitress serves 4 at a time)."""
    from ddlc.monitor.agent import Agent, AgentSettings

    agent = Agent(AgentSettings(port=0, node="n", infiniband_root=tmp_path / "ib"))
    collector = CountingCollector()
    agent.registry.register(collector)
    bodies: list[bytes] = []

    def scrape():
        with urllib.request.urlopen(agent.url, timeout=60) as response:
            bodies.append(response.read())

    threads = [threading.Thread(target=scrape) for _ in range(12)]
    try:
        for thread in threads:
            thread.start()
        while collector.readings == 0:
            threading.Event().wait(0.01)
        threading.Event().wait(0.2)  # let the other scrapes reach the server (fewer would only weaken the test)
        collector.release.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        collector.release.set()
        agent.close()
    assert len(bodies) == 12 and all(b"ddlc_test_readings" in body for body in bodies)
    assert collector.readings <= 3, collector.readings
