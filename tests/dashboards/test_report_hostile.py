"""`ddlc report utilization` against hostile input (docs/dashboards.md, *Weekly utilization review*):

- absurd but finite numbers in a run (a step time of 1e300 s, any float in any column) never break the report:
  a run whose start is no date is unreadable with its reason, every other number is formatted, whatever it is;
- a --prometheus URL urllib cannot use is one line naming --prometheus, exit 2, for the report and the dashboard;
- a server that answers, but not as Prometheus (HTML, a JSON list, another shape, deep nesting), is one line;
- the report and its plots are replaced all at once or not at all: a file size limit or a directory in the way
  leaves the previous report whole, and the error names the file that could not be written.
"""

from __future__ import annotations

import http.server
import json
import resource
import shutil
import subprocess
import threading

import pytest

from ddlc.dashboards.cost import Pricing
from ddlc.dashboards.panel_data import PanelData
from ddlc.dashboards.prometheus import PrometheusClient
from ddlc.dashboards.report import _when, collect, parse_since, write_report
from ddlc.errors import UserError
from ddlc.monitor.pricing import load_price_table
from tests.dashboards.conftest import PRICED_AS, RUN_NAME
from tests.support import PYTHON, REPO, child_env

PRICING = Pricing(PRICED_AS, None, load_price_table())


def _store(run_dir, root, edits: dict[str, dict[str, object]]):
    """`root` holding a copy of the good run, plus one copy per entry of `edits` with those keys set on every line."""
    shutil.copytree(run_dir, root / "good")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for name, changes in edits.items():
        shutil.copytree(run_dir, root / name)
        (root / name / "metrics.jsonl").write_text("".join(json.dumps({**line, **changes}) + "\n" for line in lines))
    return root


@pytest.mark.parametrize("step_time", [1e300, 1e12, 1e10])
def test_a_step_time_before_1970_makes_its_run_unreadable(run_dir, tmp_path, step_time):
    """1e300 crashed the report (OverflowError in a date), 1e12 too (year -29662), 1e10 showed a start in 1710."""
    store = _store(run_dir, tmp_path / "runs", {"absurd": {"step_time_s": step_time}})
    report = collect(store, parse_since("7d"), PRICING)
    assert [run.name for run in report.runs] == ["good"]
    [bad] = report.unreadable
    assert bad.name == "absurd" and bad.error.startswith("metrics.jsonl, first step: step_time_s")
    assert "before 1970" in bad.error and "\n" not in bad.error
    write_report(report, tmp_path / "week.md")
    text = (tmp_path / "week.md").read_text()
    assert "## Unreadable runs" in text and "| absurd | metrics.jsonl, first step: step\\_time\\_s" in text


def test_any_float_in_any_column_gives_a_whole_report(run_dir, tmp_path):
    """Every metric the trainer logs set to extremes on every line of a run of its own: one report, no
    traceback, each run either in the report or named as unreadable."""
    keys = [key for key in json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0]) if key not in ("step", "time")]
    values = {"big": 1e300, "nbig": -1e300, "max": 1.7976931348623157e308, "nan": "nan", "inf": "inf", "ninf": "-inf",
              "huge-int": 10**400, "tiny": 5e-324, "zero": 0}
    edits = {f"{key}-{label}": {key: value} for key in keys for label, value in values.items()}
    store = _store(run_dir, tmp_path / "runs", edits)
    report = collect(store, parse_since("7d"), PRICING)
    assert {run.name for run in report.runs} | {run.name for run in report.unreadable} == {"good", *edits}
    for suffix in (".md", ".html"):
        write_report(report, tmp_path / f"week{suffix}")
        text = (tmp_path / f"week{suffix}").read_text()
        shown = [run.name.replace("_", "\\_") if suffix == ".md" else run.name for run in report.runs]
        assert len(report.runs) > len(edits) // 2 and all(f"| {name} |" in text or f"<td>{name}</td>" in text
                                                           for name in shown)
    for value in (float("nan"), float("inf"), -1e12, 1e300, 1e10 * 86400, None):
        assert _when(value) == "–"


# -- --prometheus ------------------------------------------------------------------------------------------

BAD_URLS = ["http://[::1", "http://a b", "http://[zz]/", "http://" + "a" * 300, "http://", "http://h:99999",
            "http://h\x00st", "http://u:p@h:9090", "http://h:9090/?x=1"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_prometheus_url_that_cannot_be_used_is_one_line(url):
    with pytest.raises(UserError) as failure:
        PrometheusClient(url)
    message = str(failure.value)
    assert message.startswith("--prometheus: ") and "\n" not in message and len(message) < 300


@pytest.mark.parametrize("command", [["report", "utilization"], ["dashboard", "--port", "0"]])
def test_report_and_dashboard_refuse_a_bad_prometheus_url_at_start(run_dir, tmp_path, command):
    """The dashboard used to start and answer 400 on every tab; the report ended in a traceback (exit 1)."""
    try:
        result = subprocess.run([PYTHON, "-m", "ddlc", *command, "--runs-dir", str(run_dir.parent),
                                 "--prometheus", "http://[::1"], cwd=tmp_path, env=child_env(),
                                capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ddlc {command[0]} started with --prometheus http://[::1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == ["error: --prometheus: 'http://[::1' is not a usable URL (Invalid IPv6 URL)"]


ANSWERS = {
    "html": b"<html><body>It works!</body></html>",
    "list": b"[1, 2, 3]",
    "scalar": b"42",
    "no-data": b'{"status": "success"}',
    "data-list": b'{"status": "success", "data": [1]}',
    "wrong-shape": json.dumps({"status": "success", "data": {"result": [{"metric": 5, "values": "x"}]}}).encode(),
    "values-not-pairs": json.dumps({"status": "success", "data": {"result": [{"metric": {}, "values": [[1]]}]}}).encode(),
    "time-not-a-date": json.dumps({"status": "success", "data": {"result": [
        {"metric": {"node": "n1"}, "values": [[1e300, "0.5"]]}]}}).encode(),
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "not-utf8": b'{"status": "\xff\xfe"}',
}


@pytest.fixture(scope="module")
def not_prometheus():
    """An HTTP server on 127.0.0.1 that answers every GET with ANSWERS[first path segment], status 200."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = ANSWERS[self.path.split("/")[1]]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.parametrize("mode", sorted(ANSWERS))
def test_a_server_that_is_not_prometheus_is_one_line(not_prometheus, runs_dir, mode):
    """As an unreachable Prometheus: the report stops with one line naming --prometheus (exit 2 in the CLI)."""
    client = PrometheusClient(f"{not_prometheus}/{mode}")
    with pytest.raises(UserError) as failure:
        collect(runs_dir, parse_since("7d"), PRICING, run_names=[RUN_NAME], prometheus=client)
    message = str(failure.value)
    assert message.startswith(f"--prometheus: {client.url} does not answer /api/v1/query_range as Prometheus does (")
    assert "\n" not in message and len(message) < 400


def test_the_dashboard_panel_says_the_server_is_not_prometheus(not_prometheus, runs_dir):
    data = PanelData(runs_dir, PRICING, prometheus=PrometheusClient(f"{not_prometheus}/html"))
    message = data.dashboard_data("gpu-cluster-health", RUN_NAME)["panels"]["gpu-temperature"]["message"]
    assert "Prometheus gave no answer" in message and "does not answer /api/v1/query_range as Prometheus" in message


# -- writing -----------------------------------------------------------------------------------------------

def _files(directory):
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def test_a_report_that_cannot_be_written_whole_leaves_the_old_one(run_dir, tmp_path):
    """Under a file size limit of 1 KB (`ulimit -f 1`) the first plot cannot be written: the error names that
    plot, and the report written before is there byte for byte, with no temporary file left."""
    store = _store(run_dir, tmp_path / "runs", {})
    out = tmp_path / "o"
    write_report(collect(store, parse_since("7d"), PRICING), out / "keep.md")
    before = _files(out)
    assert set(before) == {"keep.md", "keep_files/loss.svg", "keep_files/throughput.svg", "keep_files/cost.svg"}
    assert len(before["keep_files/loss.svg"]) > 1024

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    result = subprocess.run([PYTHON, "-m", "ddlc", "report", "utilization", "--runs-dir", str(store), "--no-cache",
                             "--instance-type", PRICED_AS, "-o", "o/keep.md"], cwd=tmp_path, env=child_env(),
                            capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == "error: -o: cannot write o/keep_files/loss.svg: File too large"
    assert _files(out) == before


@pytest.mark.parametrize("in_the_way", ["report.md/", "report_files", "report_files/cost.svg/"])
def test_what_stands_in_the_way_is_named_before_anything_is_written(runs_dir, tmp_path, in_the_way):
    """A directory where the report or a plot goes, a file where the plots' folder goes: one line naming it,
    and no file written (the old code wrote the plots first, then failed on the report)."""
    report = collect(runs_dir, parse_since("7d"), PRICING, run_names=[RUN_NAME])
    out = tmp_path / "o"
    target = out / in_the_way.rstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if in_the_way.endswith("/"):
        target.mkdir()
    else:
        target.write_text("mine")
    before = _files(out)
    with pytest.raises(UserError) as failure:
        write_report(report, out / "report.md")
    assert str(failure.value).startswith(f"-o: {target} ")
    assert _files(out) == before  # and no file or folder but what the test made:
    assert {p.relative_to(out).as_posix() for p in out.rglob("*")} == {
        p.relative_to(out).as_posix() for p in [target, *target.parents] if out in p.parents}
