"""docs/dashboards.md, `ddlc report utilization`: with more than 15 runs the loss and throughput plots drop their
legend (one line collection for all), and the cost bar chart shows the 40 costliest runs. The figures are the
real matplotlib ones the report saves; a hook on savefig keeps them for inspection."""

from __future__ import annotations

import json
import shutil

import matplotlib
import pytest

from ddlc.dashboards.cost import Pricing
from ddlc.dashboards.report import collect, parse_since, write_report
from ddlc.monitor.pricing import load_price_table
from tests.dashboards.conftest import PRICED_AS, RUN_NAME

matplotlib.use("Agg")


@pytest.fixture
def saved_figures(monkeypatch):
    from matplotlib.figure import Figure

    figures: dict[str, Figure] = {}
    original = Figure.savefig

    def keep(self, path, *args, **kwargs):
        figures[str(path).rsplit("/", 1)[-1].removesuffix(".png")] = self
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def _copies(runs_dir, tmp_path, count: int):
    store = tmp_path / "runs"
    for index in range(count):
        name = f"run-{index:02d}"
        shutil.copytree(runs_dir / RUN_NAME, store / name)
        summary = json.loads((store / name / "summary.json").read_text())
        if "run_name" in summary:
            summary["run_name"] = name
        (store / name / "summary.json").write_text(json.dumps(summary))
    return store


@pytest.mark.parametrize("count, legend", [(15, True), (41, False)])
def test_many_runs_drop_the_legend_and_the_cost_chart_keeps_the_40_costliest(runs_dir, tmp_path, saved_figures,
                                                                              count, legend):
    store = _copies(runs_dir, tmp_path, count)
    report = collect(store, parse_since("7d"), Pricing(PRICED_AS, None, load_price_table()))
    assert len(report.runs) == count and not report.unreadable
    write_report(report, tmp_path / "week.md")
    for name in ("loss", "throughput"):
        (ax,) = saved_figures[name].axes
        assert (ax.get_legend() is not None) == legend, name
        if not legend:
            assert ax.get_title() == f"{count} runs (oldest dark, newest light)"
    (ax,) = saved_figures["cost"].axes
    assert len(ax.patches) == min(count, 40)
    assert ax.get_title() == ("cost by run" if count <= 40 else f"cost by run: the 40 costliest of {count}")
