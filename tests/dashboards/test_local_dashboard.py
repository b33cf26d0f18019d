"""The local dashboard served for real on 127.0.0.1 and opened in headless Chromium (Playwright driving the
system /usr/bin/chromium): every tab renders its panels with data from a real training run, GPU panels say
clearly that there is no GPU on a CPU machine, no console errors, plots grow while a run is going.
Screenshots of each tab go to runs/test-artifacts/dashboards/."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request

import psutil
import pytest

from ddlc.dashboards.cost import Pricing
from ddlc.dashboards.definition import DASHBOARDS, HIDDEN_INTERFACES
from ddlc.dashboards.panel_data import PanelData
from ddlc.dashboards.sampler import HostSampler
from ddlc.dashboards.server import DashboardServer
from ddlc.monitor.pricing import load_price_table
from tests.dashboards.conftest import PRICED_AS, RUN_NAME, chromium_or_skip
from tests.support import CONFIG, FAST, PYTHON, REPO, TRAIN_PY, child_env

# Panels with data on any machine that ran the training run (GPU and EFA panels depend on the hardware).
ALWAYS_DATA = {
    "gpu-cluster-health": {"cpu-utilization", "host-memory"},
    "training-progress": {"loss", "throughput", "step-time", "learning-rate", "grad-norm", "step", "tokens-seen",
                          "data-wait", "peak-memory"},
    # Only interfaces that carry the node's own traffic are drawn (not lo, ifb, veth, docker bridges).
    "network-performance": {"network-receive", "network-transmit", "network-packets", "network-errors"}
    if any(not re.fullmatch(HIDDEN_INTERFACES, name) for name in psutil.net_io_counters(pernic=True)) else set(),
    "cost-tracking": {"cost-total", "cost-projected", "cost-per-1m-tokens", "cost-over-time", "cost-per-step",
                      "cost-per-epoch", "cost-by-run", "cost-by-node"},
}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def sampler():
    sampler = HostSampler(interval_s=0.25).start()
    yield sampler
    sampler.close()


LIVE_RUN = "dash-live"


@pytest.fixture(scope="module")
def live_run(runs_dir):
    """A real run that keeps training while the tests look at it (started first: torch takes seconds to load).
    Its length is far beyond the module's life, on any machine speed: the fixture stops it, the run never ends."""
    process = subprocess.Popen(
        [PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *FAST, "training.max_steps=100000000",
         f"monitoring.run_dir={runs_dir}", f"monitoring.run_name={LIVE_RUN}",
         "monitoring.progress=plain", "checkpoint.enabled=false"],
        cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    yield process
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(runs_dir, run_dir, sampler, live_run):
    # Opened on the finished run, as `ddlc dashboard --run runs/dash-test` would.
    data = PanelData(runs_dir, Pricing(PRICED_AS, None, load_price_table()), sampler=sampler, run_path=run_dir)
    server = DashboardServer(data, port=0, refresh_ms=500).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers.get("Content-Type"), response.read()


def test_binds_loopback_and_serves_plotly_locally(server):
    assert server.host == "127.0.0.1"
    status, content_type, body = _get(server.url)
    assert status == 200 and "text/html" in content_type
    assert b'src="/static/plotly.min.js"' in body and b"cdn" not in body.lower()
    status, _, script = _get(server.url + "static/plotly.min.js")
    assert status == 200 and len(script) > 1_000_000 and b"plotly" in script[:2000].lower()


def test_api_answers_with_the_run_and_clear_errors(server):
    definition = json.loads(_get(server.url + "api/definition")[2])
    assert [d["slug"] for d in definition["dashboards"]] == [d.slug for d in DASHBOARDS]
    assert definition["default_run"] == RUN_NAME and definition["gpu_target_percent"] == 80
    training = json.loads(_get(server.url + f"api/dashboards/training-progress?run={RUN_NAME}")[2])
    loss = training["panels"]["loss"]["series"][0]
    assert len(loss["y"]) == 20 and loss["name"] == RUN_NAME
    assert loss["x"] == list(range(1, 21)) and loss["x_kind"] == "step"  # training curves are drawn by step
    validation = training["panels"]["loss"]["series"][1]  # only the evaluated steps, joined by a line
    assert validation["name"] == f"{RUN_NAME} validation" and validation["x"] == [10, 20]
    assert all(isinstance(v, float) and v > 0 for v in validation["y"])
    for url, code, message in (("api/dashboards/nope", 400, "unknown dashboard"),
                               ("api/dashboards/cost-tracking?run=ghost", 400, "run 'ghost' not found"),
                               ("nothing-here", 404, "no such page")):
        with pytest.raises(urllib.error.HTTPError) as error:
            _get(server.url + url)
        assert error.value.code == code and message in error.value.read().decode()


def test_every_tab_renders_in_chromium(server, sampler, browser, artifacts):
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
    page.goto(server.url)
    page.wait_for_selector("#tabs button")
    assert page.eval_on_selector_all("#tabs button", "bs => bs.map(b => b.textContent)") == [d.title for d in DASHBOARDS]
    time.sleep(max(0.0, 2 * sampler.interval_s))  # two host samples, so network rates exist
    for board in DASHBOARDS:
        page.click(f"#tab-{board.slug}")
        expected = ALWAYS_DATA[board.slug]
        # Wait until the tab's panels have been filled (data or a stated reason), then check each one.
        page.wait_for_function(
            "([slug, ids]) => ids.every(id => document.querySelector(`#panel-${slug}-${id}`)?.dataset.state === 'data')",
            arg=[board.slug, sorted(expected)], timeout=15000,
        )
        states = page.eval_on_selector_all(
            f"#board-{board.slug} .panel",
            "els => Object.fromEntries(els.map(e => [e.dataset.panel, [e.dataset.state, e.querySelector('.empty').textContent,"
            " e.querySelectorAll('.plot .main-svg').length]]))",
        )
        assert set(states) == {p.id for p in board.panels}
        for panel in board.panels:
            state, message, svgs = states[panel.id]
            if panel.id in expected:
                assert state == "data" and svgs > 0, f"{board.slug}/{panel.id}: {state}"
            else:  # GPU / EFA on this machine: data if present, else the reason in words
                assert state == "data" or (state == "empty" and message == panel.empty_message), (panel.id, state)
        if not sampler.has_gpu and board.slug == "gpu-cluster-health":
            assert states["gpu-utilization"][0] == "empty" and "No GPU data" in states["gpu-utilization"][1]
        page.screenshot(path=str(artifacts / f"tab-{board.slug}.png"), full_page=True)
        assert (artifacts / f"tab-{board.slug}.png").stat().st_size > 20_000
    # A real chart with the run's numbers: the loss trace holds the 20 logged losses.
    page.click("#tab-training-progress")
    page.wait_for_function("document.querySelector('#panel-training-progress-loss .plot')?.data?.[0]?.y?.length === 20")
    assert "failed" not in page.text_content("#status")
    assert errors == []
    page.close()


def test_plots_grow_while_a_run_is_going(server, runs_dir, browser, live_run):
    """The live run writes metrics.jsonl while the page is open on it; the loss trace gains points."""
    metrics = runs_dir / LIVE_RUN / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and metrics.stat().st_size > 0):
        assert live_run.poll() is None and time.monotonic() < deadline, "the live run did not start logging"
        time.sleep(0.1)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(server.url + "#training-progress")
        page.wait_for_selector(f"#run option[value='{LIVE_RUN}']", state="attached")
        page.select_option("#run", LIVE_RUN)
        count = "(document.querySelector('#panel-training-progress-loss .plot')?.data?.[0]?.y?.length || 0)"
        page.wait_for_function(f"{count} > 0", timeout=15000)
        first = page.evaluate(count)
        page.wait_for_function(f"{count} > {first}", timeout=15000)
        assert live_run.poll() is None, "the run ended before the page could watch it grow"
        # The projection exists while the run goes (no summary yet) and exceeds the cost so far.
        cost = json.loads(_get(server.url + f"api/dashboards/cost-tracking?run={LIVE_RUN}")[2])["panels"]
        assert cost["cost-projected"]["series"][0]["y"][-1] > cost["cost-total"]["series"][0]["y"][-1]
    finally:
        page.close()


def test_error_replies_are_one_short_line_and_head_works(server):
    for url in ("api/dashboards/" + "x" * 12_000, f"api/dashboards/cost-tracking?run={'r' * 12_000}",
                "nothing/" + "p" * 12_000, "api/dashboards/nope?" + "q" * 60_000):
        with pytest.raises(urllib.error.HTTPError) as error:
            _get(server.url + url)
        body = error.value.read()
        assert error.value.code in (400, 404, 431) and 0 < len(body) < 1000, (url[:40], error.value.code, body[:200])
    request = urllib.request.Request(server.url + "api/definition", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and int(response.headers["Content-Length"]) > 100 and response.read() == b""


def test_a_hash_only_url_change_switches_tabs(server, browser):
    """A link to #slug, a typed hash or Back/Forward changes the URL without a reload: the page follows it."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    selected = "document.querySelector('#tabs button[aria-selected=\"true\"]')?.dataset.board"
    visible = "document.querySelector('.board.active')?.id"
    try:
        page.goto(server.url + "#training-progress")
        page.wait_for_function(f"{selected} === 'training-progress'")
        for slug in ("cost-tracking", "network-performance"):
            page.evaluate(f"location.hash = '#{slug}'")  # a new history entry, no reload
            page.wait_for_function(f"{selected} === '{slug}'", timeout=10000)
            assert page.evaluate(visible) == f"board-{slug}"
            # The new tab's panels get filled, not left at "loading".
            page.wait_for_function(f"[...document.querySelectorAll('#board-{slug} .panel')]"
                                   ".every(p => p.dataset.state !== 'loading')", timeout=15000)
        page.go_back()
        page.wait_for_function(f"{selected} === 'cost-tracking'", timeout=10000)
        page.evaluate("location.hash = '#no-such-board'")  # unknown: stays where it was
        page.wait_for_timeout(300)
        assert page.evaluate(selected) == "cost-tracking"
    finally:
        page.close()


def test_efa_traffic_panel_draws_rdma_tx_and_rx(runs_dir, run_dir, browser, artifacts, tmp_path):
    """The EFA panel on a machine with EFA (a sysfs-shaped tree whose counters grow while the page is open):
    one RDMA, one tx and one rx line per device, drawn in Chromium (#17 item 8)."""
    import threading

    from tests.dashboards.test_efa_panel import GROWTH, _tree

    root = tmp_path / "ib"
    _tree(root, 0)
    stop = threading.Event()

    def grow():
        minute = 0
        while not stop.wait(0.1):
            minute += 1
            _tree(root, minute)

    writer = threading.Thread(target=grow, daemon=True)
    writer.start()
    sampler = HostSampler(interval_s=0.25, infiniband_root=root).start()
    data = PanelData(runs_dir, Pricing(PRICED_AS, None, load_price_table()), sampler=sampler, run_path=run_dir)
    server = DashboardServer(data, port=0, refresh_ms=500).start()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(server.url + "#network-performance")
        names = "document.querySelector('#panel-network-performance-efa-rdma .plot')?.data?.map(t => t.name) || []"
        try:  # generous: the machine is shared and loaded
            page.wait_for_function(f"({names}).length === {3 * len(GROWTH)}", timeout=60000)
        except Exception as error:
            panel = json.loads(_get(server.url + "api/dashboards/network-performance")[2])["panels"]["efa-rdma"]
            raise AssertionError(f"traces {page.evaluate(names)}; the API said {str(panel)[:500]}") from error
        traces = sorted(page.evaluate(names))
        assert traces == sorted(f"{sampler.node} {d} {kind}" for d in GROWTH for kind in ("RDMA", "tx", "rx"))
        page.screenshot(path=str(artifacts / "tab-network-performance-efa.png"), full_page=True)
    finally:
        page.close()
        server.close()
        stop.set()
        writer.join()
        sampler.close()
