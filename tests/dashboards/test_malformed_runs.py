"""One bad file never breaks a view: a generated corpus of malformed run directories (tests/dashboards/malformed.py,
~50 kinds over metrics.jsonl, summary.json and config.yaml) next to a good run, read by every view.

Each view shows the good run as normal and names every bad run with a one-line reason that names the file:
the reader (RunStore), the dashboard's JSON API served over HTTP (every tab, every run), and
`ddlc report utilization` run as a user runs it.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.request

import pytest

from ddlc.dashboards.cost import Pricing
from ddlc.dashboards.definition import DASHBOARDS
from ddlc.dashboards.panel_data import PanelData
from ddlc.dashboards.runs import RunStore, load_runs
from ddlc.dashboards.server import DashboardServer
from ddlc.monitor.pricing import load_price_table
from tests.dashboards.conftest import PRICED_AS
from tests.dashboards.malformed import GOOD, KINDS, make_corpus
from tests.support import PYTHON, REPO, run


def _api(server: DashboardServer):
    """GET a path of the dashboard's API: its JSON, after checking the reply is a 200 with a body."""
    def get(path: str) -> dict:
        with urllib.request.urlopen(server.url + path, timeout=30) as response:
            body = response.read()
            assert response.status == 200 and body, path
            return json.loads(body)
    return get


@pytest.fixture(scope="module")
def corpus(run_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    broken = make_corpus(run_dir, root)
    return root, broken


def test_the_reader_names_every_bad_run_and_reads_the_good_one(corpus):
    root, broken = corpus
    runs = {r.name: r for r in load_runs(root)}
    assert set(runs) == {GOOD, *broken}
    good = runs[GOOD]
    assert good.readable and good.num_steps == 20 and good.finished and good.target_steps == 20
    for name, file in broken.items():
        error = runs[name].error
        assert error is not None, f"{name}: read as good"
        assert file in error and "\n" not in error and len(error) <= 240, (name, error)
    assert len(broken) >= 45


def test_reasons_name_the_line_and_field(corpus):
    root, _ = corpus
    runs = {r.name: r for r in load_runs(root)}
    assert runs["m-loss-string"].error.startswith("metrics.jsonl line 4: loss")
    assert runs["m-truncated-middle-line"].error.startswith("metrics.jsonl line 4: not valid JSON")
    assert runs["m-not-utf8"].error == "metrics.jsonl line 4: not UTF-8 text"
    assert runs["m-directory"].error == "metrics.jsonl is a directory"
    assert runs["m-fifo"].error == "metrics.jsonl is not a regular file"
    assert runs["s-nodes-string"].error.startswith("summary.json: num_nodes")
    assert runs["c-max-steps-string"].error.startswith("config.yaml: training.max_steps")
    assert runs["s-list"].error.startswith("summary.json: ")


def test_the_dashboard_shows_the_good_run_and_names_the_bad_ones_on_every_tab(corpus):
    root, broken = corpus
    data = PanelData(root, Pricing(PRICED_AS, None, load_price_table()))
    server = DashboardServer(data, port=0).start()
    get = _api(server)
    try:
        definition = get("api/definition")
        assert set(definition["runs"]) == {GOOD, *broken}
        assert set(definition["unreadable"]) == set(broken)
        for board in DASHBOARDS:
            page = get(f"api/dashboards/{board.slug}?run={GOOD}")
            assert page["run_error"] is None
        cost = get(f"api/dashboards/cost-tracking?run={GOOD}")["panels"]
        assert [s["name"] for s in cost["cost-by-run"]["series"]] == [GOOD]  # the Cost tab reads every run
        assert cost["cost-by-run"]["note"].startswith(f"{len(broken)} unreadable run(s) left out")
        assert cost["cost-total"]["series"][0]["y"][-1] > 0
        training = get(f"api/dashboards/training-progress?run={GOOD}")["panels"]
        assert len(training["loss"]["series"][0]["y"]) == 20
        for name in broken:
            for board in DASHBOARDS:
                page = get(f"api/dashboards/{board.slug}?run={urllib.request.quote(name)}")
                assert page["run_error"] == definition["unreadable"][name]
            loss = get(f"api/dashboards/training-progress?run={name}")["panels"]["loss"]
            assert loss["series"] == [] and loss["message"] == f"run {name} is unreadable: {page['run_error']}"
    finally:
        server.close()


def test_report_names_the_bad_runs_and_reports_the_good_one(corpus, tmp_path):
    root, broken = corpus
    out = tmp_path / "report.md"
    result = run([PYTHON, "-m", "ddlc", "report", "utilization", "--runs-dir", str(root), "-o", str(out),
                  "--instance-type", PRICED_AS], cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    text = out.read_text()
    assert f"Runs in the window: 1, and {len(broken)} unreadable" in text
    runs_table = text.split("## Runs")[1].split("##")[0]
    assert f"| {GOOD} |" in runs_table
    unreadable = text.split("## Unreadable runs")[1]
    for name, file in broken.items():
        assert f"| {name} | " in unreadable and file in unreadable.split(f"| {name} | ")[1].split("\n")[0], name


def test_a_half_written_last_line_is_not_an_error_and_is_read_when_finished(run_dir, tmp_path):
    store = RunStore(tmp_path)
    live = tmp_path / "live"
    live.mkdir()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    metrics = live / "metrics.jsonl"
    metrics.write_text("\n".join(lines[:5]) + "\n" + lines[5][:17])  # the trainer is writing line 6
    first = store.load(live)
    assert first.readable and first.num_steps == 5
    assert store.load(live) is first  # nothing changed: not read again
    with metrics.open("a") as handle:
        handle.write(lines[5][17:] + "\n" + "\n".join(lines[6:10]) + "\n")
    second = store.load(live)
    assert second.readable and list(second.columns["step"]) == list(range(1, 11))
    assert first.num_steps == 5  # a record handed out earlier does not change under its reader


def test_only_appended_bytes_are_parsed_and_a_replaced_file_is_read_again(run_dir, tmp_path, monkeypatch):
    from ddlc.dashboards import metrics_file as runs_module

    parsed: list[int] = []
    original = runs_module.MetricsFile._parse
    monkeypatch.setattr(runs_module.MetricsFile, "_parse",
                        lambda self, name, block: (parsed.append(len(block)), original(self, name, block))[1])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    live = tmp_path / "live"
    live.mkdir()
    metrics = live / "metrics.jsonl"
    metrics.write_text("".join(lines[:10]))
    store = RunStore(tmp_path)
    assert store.load(live).num_steps == 10
    with metrics.open("a") as handle:
        handle.write("".join(lines[10:12]))
    assert store.load(live).num_steps == 12
    assert parsed == [len("".join(lines[:10])), len("".join(lines[10:12]))]
    # Rewritten in place as something shorter (a new run of the same name): read from the start.
    replacement = live / "new.jsonl"
    replacement.write_text("".join(lines[:3]))
    os.replace(replacement, metrics)
    assert store.load(live).num_steps == 3
    # Rewritten in place (same inode) with other content of at least the same length: read from the start.
    metrics.write_text("".join(lines[5:12]))
    assert list(store.load(live).columns["step"]) == list(range(6, 13))
    # A malformed file that gets repaired is read again.
    metrics.write_text("".join(lines[:3]) + "oops\n")
    assert "line 4" in store.load(live).error
    time.sleep(0.01)
    metrics.write_text("".join(lines[:4]))
    assert store.load(live).num_steps == 4


def test_every_kind_in_the_corpus_is_distinct():
    assert len(KINDS) == len(set(KINDS)) and all(file in ("metrics.jsonl", "summary.json", "config.yaml")
                                                  for file, _ in KINDS.values())


def test_the_writer_uses_the_same_model_and_repairs_its_own_torn_line(tmp_path):
    """MetricsLogger validates each record with StepRecord (what the readers use) and, restarted after a kill -9
    that left half a line, cuts that half off before appending, so the resumed run stays readable."""
    from pydantic import ValidationError

    from ddlc.runtime.metrics import MetricsLogger

    run_dir = tmp_path / "resumed"
    logger = MetricsLogger(run_dir, total_steps=10, progress="plain", log_interval=1)
    for step in (1, 2, 3):
        logger.log({"step": step, "loss": float("nan") if step == 2 else 1.0 / step})
    with pytest.raises(ValidationError):
        logger.log({"step": "four", "loss": 0.2})  # the reader would reject it: so does the writer
    logger.close()
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 4, "loss": 0.2')  # killed mid-line
    logger = MetricsLogger(run_dir, total_steps=10, progress="plain", log_interval=1)
    logger.log({"step": 4, "loss": 0.25})
    logger.close()
    run = RunStore(tmp_path).load(run_dir)
    assert run.readable, run.error
    assert list(run.columns["step"]) == [1, 2, 3, 4] and math.isnan(run.columns["loss"][1])


def test_a_run_priced_as_an_unknown_instance_type_leaves_out_only_that_run(run_dir, tmp_path):
    """summary.json naming an instance type the price table lacks used to fail the Cost tab (HTTP 400) for every
    run and abort `ddlc report` (exit 2): that one run is named as unreadable for cost; every other run shows."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(run_dir, root / "good")
    shutil.copytree(run_dir, root / "unpriced")
    summary_path = root / "unpriced" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["instance_type"] = "p9.nowhere"
    summary_path.write_text(json.dumps(summary))

    server = DashboardServer(PanelData(root, Pricing(PRICED_AS, None, load_price_table())), port=0).start()
    get = _api(server)
    try:
        good = get("api/dashboards/cost-tracking?run=good")
        assert good["run_error"] is None and "p9.nowhere" in good["unreadable"]["unpriced"]
        assert [s["name"] for s in good["panels"]["cost-by-run"]["series"]] == ["good"]
        assert good["panels"]["cost-total"]["series"][0]["y"][-1] > 0
        bad = get("api/dashboards/cost-tracking?run=unpriced")
        assert "p9.nowhere" in bad["run_error"] and bad["panels"]["cost-total"]["series"] == []
        assert get("api/dashboards/training-progress?run=unpriced")["run_error"] is None  # its metrics are fine
    finally:
        server.close()

    out = tmp_path / "report.md"
    result = run([PYTHON, "-m", "ddlc", "report", "utilization", "--runs-dir", str(root), "-o", str(out),
                  "--instance-type", PRICED_AS], cwd=REPO, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    text = out.read_text()
    assert "| good |" in text.split("## Runs")[1].split("##")[0]
    assert "| unpriced | " in text.split("## Unreadable runs")[1] and "p9.nowhere" in text.split("## Unreadable runs")[1]


def test_a_run_directory_named_in_bytes_that_are_not_utf8_can_be_opened(run_dir, tmp_path):
    """`cp -r runs/r1 "runs/$(printf 'bad\\xff\\xfename')"` was listed ("bad\\udcff\\udcfename") but could never be
    opened: the page's encodeURIComponent threw URIError and `?run=bad%FF%FEname` was "not found". The server
    takes %FF as the byte it is (Python's surrogateescape, as the name is listed); the page sends it so."""
    import shutil
    import subprocess
    import urllib.parse

    root = tmp_path / "runs"
    name = os.fsdecode(b"bad\xff\xfename")
    shutil.copytree(run_dir, root / name)
    server = DashboardServer(PanelData(root, Pricing(PRICED_AS, None, load_price_table())), port=0).start()
    get = _api(server)
    try:
        definition = get("api/definition")
        assert definition["runs"] == [name] and definition["default_run"] == name and not definition["unreadable"]
        query = urllib.parse.quote(name, safe="", errors="surrogateescape")
        assert query == "bad%FF%FEname"
        for board in DASHBOARDS:
            assert get(f"api/dashboards/{board.slug}?run={query}")["run_error"] is None
        loss = get(f"api/dashboards/training-progress?run={query}")["panels"]["loss"]
        assert len(loss["series"][0]["y"]) == 20
    finally:
        server.close()

    # the page's encoder sends exactly that (and what encodeURIComponent sends for every other name)
    script = (REPO / "src/ddlc/dashboards/static/dashboard.js").read_text()
    function = script[script.index("function encodeRun("):]
    function = function[: function.index("\n}\n") + 3]
    names = [name, "plain", "a b&c=d#e?f/g%h+ü€😀<script>"]
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    result = subprocess.run([node, "-e", function + "process.stdout.write(JSON.stringify(JSON.parse("
                             "require('fs').readFileSync(0, 'utf8')).map(encodeRun)))"],
                            input=json.dumps(names), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [urllib.parse.quote(n, safe="-_.!~*'()", errors="surrogateescape")
                                         for n in names]
