"""ddlc.dashboards.svg_chart: the report's figures written as SVG text. Round ticks, gaps for NaN/inf, text
that stays text whatever a run is named, and well-formed XML for empty, single-point and extreme data."""

from __future__ import annotations

import math
from xml.etree import ElementTree

import pytest

from ddlc.dashboards.svg_chart import Chart, Series, bar_chart, line_chart, nice_ticks, tick_label

NS = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ElementTree.Element:
    return ElementTree.fromstring(svg)  # raises on anything that is not well-formed XML


def _classed(root, cls):
    return [e for e in root.iter() if e.get("class") == cls]


@pytest.mark.parametrize("low, high, expected", [
    (0, 252_000, [0, 50_000, 100_000, 150_000, 200_000, 250_000]),
    (1, 20, [5, 10, 15, 20]),
    (0.0123, 0.0456, [0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045]),
    (0, 105, [0, 20, 40, 60, 80, 100]),
])
def test_ticks_are_round_values_inside_the_limits(low, high, expected):
    start, stop, ticks = nice_ticks(low, high)
    assert start <= low and stop >= high
    assert ticks == pytest.approx(expected)
    step = ticks[1] - ticks[0]
    labels = [tick_label(t, step) for t in ticks]
    assert len(set(labels)) == len(labels) and not any("000000" in label for label in labels)


def test_tick_labels():
    assert tick_label(0.30000000000000004, 0.1) == "0.3" and tick_label(-1e-17, 0.1) == "0"
    assert tick_label(250_000, 50_000) == "250,000" and tick_label(7.5, 2.5) == "7.5"
    assert tick_label(3e-7, 1e-7) == "3e-07"
    for low, high in ((5, 5), (0, 0), (math.nan, 1), (-math.inf, math.inf), (-1e300, 1e300)):
        start, stop, ticks = nice_ticks(low, high)
        assert math.isfinite(start) and math.isfinite(stop) and start < stop and ticks


def test_nan_and_inf_are_gaps_and_points_are_counted():
    svg = line_chart(Chart("t", "step", "loss"), [
        Series("a", [1, 2, 3, 4, 5, 6], [1.0, math.nan, 2.0, 3.0, math.inf, 4.0]),
        Series("b", [1, 2], [math.nan, math.nan]),
        Series("c", [], []),
        Series("d", [1, 2, 3], [1e308, -1e308, 5.0]),  # finite extremes: clipped to the drawing band, not lost
    ])
    root = _parse(svg)
    paths = {p.find(f"{NS}title").text: p for p in _classed(root, "series")}
    assert [int(paths[n].get("data-points")) for n in "abcd"] == [4, 0, 0, 3]
    assert paths["a"].get("d").count("M") == 3 and paths["b"].get("d") == "" == paths["c"].get("d")
    for path in paths.values():
        assert all(abs(int(v)) <= 1e6 for v in path.get("d").replace("M", " ").replace("L", " ").split())
    assert [e.text for e in _classed(root, "legend-entry")[0].iter(f"{NS}text")] == ["a"]


def test_empty_chart_is_still_a_figure():
    root = _parse(line_chart(Chart("nothing", "step", "loss"), []))
    assert _classed(root, "series") == [] and _classed(root, "y-tick") and _classed(root, "x-tick")
    root = _parse(bar_chart(Chart("no bars", "", "USD"), [], []))
    assert _classed(root, "bar") == []


HOSTILE = "<script>alert('x')</script>&\"]]>\x01\x1b"


def test_names_stay_text():
    svg = line_chart(Chart(HOSTILE, HOSTILE, HOSTILE), [Series(HOSTILE, [1, 2], [1, 2])])
    svg += bar_chart(Chart(HOSTILE, "", "USD"), [HOSTILE], [1.0])
    assert "<script" not in svg and "\x01" not in svg and "\x1b" not in svg
    line, bars = svg.split("</svg>\n")[:2]
    for part in (line + "</svg>", bars + "</svg>"):
        root = _parse(part)
        assert {e.tag.removeprefix(NS) for e in root.iter()} <= {"svg", "title", "rect", "clipPath", "text",
                                                                  "line", "g", "path"}
    root = _parse(line + "</svg>")
    shown = HOSTILE.replace("\x01", "\ufffd").replace("\x1b", "\ufffd")
    assert root.find(f"{NS}title").text == shown
    assert _classed(root, "series")[0].find(f"{NS}title").text == shown


def test_long_names_are_shortened_on_the_chart_and_whole_in_the_tooltip():
    name = "run-" + "x" * 300
    root = _parse(bar_chart(Chart("c", "", "USD"), [name], [2.5]))
    (label,) = _classed(root, "bar-label")
    assert len(label.text) == 24 and label.text.endswith("…")
    assert _classed(root, "bar")[0].find(f"{NS}title").text == f"{name}: 2.5"


def test_bars_and_a_non_finite_value():
    root = _parse(bar_chart(Chart("c", "", "USD"), ["a", "b", "c"], [1.0, math.nan, 3.0]))
    assert [b.find(f"{NS}title").text for b in _classed(root, "bar")] == ["a: 1", "c: 3"]
    assert [t.text for t in _classed(root, "bar-label")] == ["a", "b", "c"]
    heights = [float(b.get("height")) for b in _classed(root, "bar")]
    assert heights[1] == pytest.approx(3 * heights[0], rel=0.02)  # the axis starts at 0


def test_time_axis_labels_in_utc():
    start = 1_764_547_200  # 2025-12-01 00:00 UTC
    root = _parse(line_chart(Chart("", "time (UTC)", "%", x_time=True, y_range=(0, 105)),
                             [Series("n", [start + 60 * i for i in range(361)], [50.0] * 361)]))
    ticks = [t.text for t in _classed(root, "x-tick")]
    assert ticks == ["12-01 00:00", "12-01 01:00", "12-01 02:00", "12-01 03:00", "12-01 04:00", "12-01 05:00",
                     "12-01 06:00"]
    assert [t.text for t in _classed(root, "y-tick")] == ["0", "20", "40", "60", "80", "100"]
