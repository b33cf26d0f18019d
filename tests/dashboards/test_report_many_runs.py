"""docs/dashboards.md, `ddlc report utilization`: with more than 15 runs the loss and throughput plots drop their
legend (one gradient from oldest to newest), and the cost bar chart shows the 40 costliest runs; run names
written by users never become markup in the report or its SVG figures, and odd data (NaN/inf losses, a run
without steps, an empty store) still gives a whole report. The figures are parsed as the files the report wrote."""

from __future__ import annotations

import json
import shutil
from xml.etree import ElementTree

import pytest

from ddlc.dashboards.cost import Pricing
from ddlc.dashboards.report import collect, parse_since, write_report
from ddlc.monitor.pricing import load_price_table
from tests.dashboards.conftest import PRICED_AS, RUN_NAME
from tests.dashboards.test_report import svg_parts


def _copies(runs_dir, store, names):
    for name in names:
        shutil.copytree(runs_dir / RUN_NAME, store / name)
        summary = json.loads((store / name / "summary.json").read_text())
        if "run_name" in summary:
            summary["run_name"] = name.encode("utf-8", "replace").decode()  # JSON cannot hold a lone surrogate
        (store / name / "summary.json").write_text(json.dumps(summary))
    return store


@pytest.mark.parametrize("count, legend", [(15, True), (41, False)])
def test_many_runs_drop_the_legend_and_the_cost_chart_keeps_the_40_costliest(runs_dir, tmp_path, count, legend):
    store = _copies(runs_dir, tmp_path / "runs", [f"run-{index:02d}" for index in range(count)])
    report = collect(store, parse_since("7d"), Pricing(PRICED_AS, None, load_price_table()))
    assert len(report.runs) == count and not report.unreadable
    write_report(report, tmp_path / "week.md")
    for name in ("loss", "throughput"):
        figure = svg_parts(tmp_path / "week_files" / f"{name}.svg")
        assert figure["series"] == {f"run-{index:02d}": 20 for index in range(count)}, name  # a line per run
        assert bool(figure["legend"]) == legend, name
        assert figure["title"] == ([] if legend else [f"{count} runs (oldest dark, newest light)"])
    cost = svg_parts(tmp_path / "week_files" / "cost.svg")
    assert len(cost["bars"]) == len(cost["bar_labels"]) == min(count, 40)
    assert cost["title"] == ["cost by run" if count <= 40 else f"cost by run: the 40 costliest of {count}"]


HOSTILE = ['<script>alert(1)<\\script>', 'a&b "quoted" \'single\'', "]]><x y='1'>", "\x01ctl\x7f", "|pipe|",
           "x" * 200, "not-utf8-\udcff"]  # the last: a directory name with the byte 0xff


def _step_lines(losses, start):
    return "".join(json.dumps({"step": i, "time": start + i, "loss": loss, "tokens_per_s": 100.0}) + "\n"
                   for i, loss in enumerate(losses, 1))


def test_hostile_names_and_odd_data_give_a_whole_report_without_markup(runs_dir, tmp_path):
    """Run names are directory names a user chose: `<script>`, quotes, `]]>`, control characters, a `|` that
    would split a Markdown table, bytes that are not UTF-8. None becomes markup in the HTML page, the Markdown or the SVG figures
    (each figure parses as XML and holds no element but the chart's own); each name is shown as text."""
    store = _copies(runs_dir, tmp_path / "runs", HOSTILE)
    odd = {"nan-loss": ["nan", 2.0, "inf", 1.0, "-inf", 0.5], "all-nan": ["nan", "nan"]}
    now = json.loads((runs_dir / RUN_NAME / "metrics.jsonl").read_text().splitlines()[-1])["time"]
    for name, losses in odd.items():
        (store / name).mkdir()
        (store / name / "metrics.jsonl").write_text(_step_lines(losses, now))
    (store / "no-steps").mkdir()
    (store / "no-steps" / "metrics.jsonl").write_text("")
    (store / "no-steps" / "config.yaml").write_text("training:\n  max_steps: 5\n")
    report = collect(store, parse_since("7d"), Pricing(PRICED_AS, None, load_price_table()))
    assert {r.name for r in report.runs} >= set(HOSTILE) | set(odd) and not report.unreadable
    for suffix in ("md", "html"):
        write_report(report, tmp_path / f"week.{suffix}")
    page = (tmp_path / "week.html").read_text()
    assert "<script" not in page and "&lt;script&gt;" in page and "<x " not in page
    markdown = (tmp_path / "week.md").read_text()
    assert "<script" not in markdown and "&lt;script&gt;" in markdown and "\\|pipe\\|" in markdown
    allowed = {"svg", "title", "rect", "clipPath", "text", "line", "g", "path"}
    for name in ("loss", "throughput", "cost"):
        figure = svg_parts(tmp_path / "week_files" / f"{name}.svg")
        assert figure["elements"] <= allowed, (name, figure["elements"] - allowed)
        text = (tmp_path / "week_files" / f"{name}.svg").read_text()
        assert "<script" not in text and "<x " not in text and "\x01" not in text
    loss = svg_parts(tmp_path / "week_files" / "loss.svg")
    assert loss["series"]["<script>alert(1)<\\script>"] == 20  # the name, as text
    assert loss["series"]["\ufffdctl\x7f"] == 20  # a control character XML cannot hold: replaced, not dropped
    assert loss["series"]["not-utf8-\ufffd"] == 20 and "| not-utf8-\ufffd |" in markdown
    assert loss["series"]["nan-loss"] == 3 and loss["series"]["all-nan"] == 0  # NaN/inf are gaps, not points
    d = next(e.get("d") for e in ElementTree.parse(tmp_path / "week_files" / "loss.svg").iter()
             if e.get("class") == "series" and e.find("{http://www.w3.org/2000/svg}title").text == "nan-loss")
    assert d.count("M") == 3  # three finite stretches (2.0, 1.0, 0.5 between the non-finite losses)
    cost = svg_parts(tmp_path / "week_files" / "cost.svg")
    assert "<script>alert(1)<\\script>" in {label.split(": ")[0] for label in cost["bars"]}


def test_an_empty_store_and_a_single_step_run(runs_dir, tmp_path):
    empty = collect(tmp_path / "nothing", parse_since("7d"), Pricing(PRICED_AS, None, load_price_table()))
    text = write_report(empty, tmp_path / "empty.md").read_text()
    assert "No run logged a step in this window." in text and ".svg" not in text
    store = tmp_path / "runs"
    (store / "one").mkdir(parents=True)
    now = json.loads((runs_dir / RUN_NAME / "metrics.jsonl").read_text().splitlines()[-1])["time"]
    (store / "one" / "metrics.jsonl").write_text(_step_lines([3.0], now))
    report = collect(store, parse_since("7d"), Pricing(PRICED_AS, None, load_price_table()))
    write_report(report, tmp_path / "one.html")
    loss = svg_parts(tmp_path / "one_files" / "loss.svg")
    assert loss["series"] == {"one": 1} and loss["y_ticks"] and loss["x_ticks"]  # one point: axes around it


MARKDOWN_SYNTAX = ["*bold*_under_", "`code`", "[link](javascript:evil)", "[ref](https:evil.example)", "~~struck~~", "\\|esc",
                   "\x1b[31mred"]


def test_markdown_syntax_in_run_names_stays_text(runs_dir, tmp_path):
    """Rendered as GitHub-flavoured Markdown (markdown-it, which rich already brings), a run named `*bold*` is not
    emphasis, `` `code` `` no code span, `[a](b)` no link, and `\\|` does not split its table cell; a terminal
    escape (ESC) is not written at all (a `cat` of the report would obey it)."""
    from markdown_it import MarkdownIt

    store = _copies(runs_dir, tmp_path / "runs", MARKDOWN_SYNTAX)
    report = collect(store, parse_since("7d"), Pricing(PRICED_AS, None, load_price_table()))
    text = write_report(report, tmp_path / "week.md").read_text()
    assert "\x1b" not in text and "\x1b" not in write_report(report, tmp_path / "week.html").read_text()
    page = MarkdownIt("gfm-like").render(text)
    for markup in ("<em>", "<strong>", "<code>", "<a ", "<s>", "<del>"):
        assert markup not in page, markup
    cells = {row.split("</td>")[0].removeprefix("<td>") for row in page.split("<tr>\n")[1:]}
    for name in MARKDOWN_SYNTAX[:-1]:
        assert name in cells, name  # each whole name is one cell's text


def test_a_report_name_that_is_not_utf8(runs_dir, tmp_path):
    """`-o` named with a byte that is not UTF-8: written, its plots linked by their percent-encoded bytes."""
    store = _copies(runs_dir, tmp_path / "runs", ["one"])
    report = collect(store, parse_since("7d"), Pricing(PRICED_AS, None, load_price_table()))
    for suffix in ("md", "html"):
        out = write_report(report, tmp_path / f"week-\udcff.{suffix}")
        assert "week-%FF_files/loss.svg" in out.read_text()
        assert (tmp_path / "week-\udcff_files" / "loss.svg").is_file()
