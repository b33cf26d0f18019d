"""Line and bar charts written as SVG text: the utilization report's plots, without a plotting library.

    line_chart(Chart, [Series(name, xs, ys)])  ->  "<svg ...>"      bar_chart(Chart, labels, values) -> "<svg ...>"

    data -> finite (x, y) range -> axis limits on round ticks (1, 2, 2.5, 5 x 10^k; or minutes/hours/days for
    time axes) -> pixels (numpy) -> one <path d="M x,y L x,y ..."> per series, a gap where a value is NaN/inf

Every text that reaches the SVG (titles, axis labels, run and node names, tick labels) goes through `_text()`,
which escapes XML markup: run names are chosen by users, and a run named `<script>` must stay text. Long names
are shortened on the chart and kept whole in a <title> tooltip. Series and bars carry `class` attributes
(`series`, `bar`, `legend-entry`, `x-tick`, `y-tick`) so tests and readers can find them.

A figure costs a few milliseconds per 10,000 points (the report draws each run cut to at most 800 points).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

WIDTH, HEIGHT = 880, 396  # the report's figures were 8 x 3.6 in at 110 dpi
LEFT, RIGHT, TOP, BOTTOM = 72, 36, 30, 46
FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # distinct colors for a legend of up to 10 (then they repeat, dashed)
_VIRIDIS = ((0x44, 0x01, 0x54), (0x3b, 0x52, 0x8b), (0x21, 0x91, 0x8c), (0x5e, 0xc9, 0x62), (0xfd, 0xe7, 0x25))
SCALE = 10  # path coordinates are in 1/SCALE pixels (integers)
MARGIN = 0.03  # of the data's span, left empty at each end of an axis
LIMIT = 1e300  # values beyond this are clipped for the axis range (the span of two such values must stay finite)
NAME_CHARS = 40  # a name longer than this is shortened on the chart (whole in the tooltip)
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_TIME_STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 28 * 86400)


@dataclass
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: Optional[str] = None  # None: picked from the palette / gradient by position
    dashed: bool = False
    width: float = 1.0


@dataclass
class Chart:
    title: str = ""
    x_label: str = ""
    y_label: str = ""
    legend: bool = True
    x_time: bool = False  # x values are Unix seconds: ticks on minutes/hours/days, labelled in UTC
    y_range: Optional[tuple[float, float]] = None  # fixed y limits (else from the data)
    width: int = WIDTH
    height: int = HEIGHT
    bottom: int = BOTTOM


# xml.sax.saxutils.escape with both quotes, without its import of urllib.request and http.client (~15 ms per report)
_XML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"})


def _text(value: object, limit: Optional[int] = None) -> str:
    """XML-safe text of `value`, on one line; shortened to `limit` characters with an ellipsis."""
    flat = " ".join(str(value).split())
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    # Characters XML 1.0 forbids even escaped (control bytes in a run name; the lone surrogates Python makes of
    # a directory name that is not UTF-8, which no encoder writes) become U+FFFD.
    flat = _FORBIDDEN.sub("\ufffd", flat)
    return flat.translate(_XML_ESCAPES)


def gradient(count: int) -> list[str]:
    """`count` colors from dark violet to yellow (viridis): oldest run dark, newest light."""
    colors = []
    for index in range(count):
        position = index / (count - 1) * (len(_VIRIDIS) - 1) if count > 1 else 0.0
        low = min(int(position), len(_VIRIDIS) - 2)
        frac = position - low
        rgb = [round(a + (b - a) * frac) for a, b in zip(_VIRIDIS[low], _VIRIDIS[low + 1])]
        colors.append("#%02x%02x%02x" % tuple(rgb))
    return colors


# -- ticks ------------------------------------------------------------------------------------------------

def nice_ticks(low: float, high: float, count: int = 6) -> tuple[float, float, list[float]]:
    """Axis limits around [low, high] (a margin of 3% of the span on each side, none past a 0 the data starts
    or ends at) and the round values (1, 2, 2.5, 5 x 10^k) within them, about `count` of them."""
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    low, high = sorted((min(max(low, -LIMIT), LIMIT), min(max(high, -LIMIT), LIMIT)))
    if high - low <= max(abs(low), abs(high)) * 1e-12 + 1e-300:  # one value (or all equal): a band around it
        pad = abs(low) * 0.05 or 0.5
        low, high = low - pad, high + pad
    else:
        pad = (high - low) * MARGIN
        low, high = (low if low == 0 else low - pad), (high if high == 0 else high + pad)
    span = high - low
    magnitude = 10.0 ** math.floor(math.log10(span / count))
    # The round step whose number of ticks is nearest `count` (the larger step on a tie).
    step = min((m * magnitude for m in (10, 5, 2.5, 2, 1)), key=lambda s: abs(span / s - count))
    first = math.ceil(low / step - 1e-9) * step
    ticks = [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]
    return low, high, ticks


def tick_label(value: float, step: float) -> str:
    """A tick's label with as many decimals as the step needs (no 0.30000000000000004, no -0)."""
    if value == 0 or abs(value) < step * 1e-9:
        return "0"
    if abs(value) >= 1e7 or abs(step) < 1e-4:
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step * 10 ** decimals, 6) % 1:  # 2.5 x 10^k needs one more digit
        decimals += 1
    return f"{value:,.{decimals}f}"


def time_ticks(low: float, high: float, count: int = 7) -> tuple[float, float, list[float], str]:
    """Limits, ticks on whole minutes/hours/days (UTC) and their strftime format, for Unix-second x values."""
    if high <= low:
        low, high = low - 1800, high + 1800
    step = next((s for s in _TIME_STEPS if (high - low) / s <= count), None)
    if step is None:
        step = math.ceil((high - low) / count / 86400) * 86400
    first = math.ceil(low / step) * step
    ticks = [first + i * step for i in range(int((high - first) // step) + 1)]
    fmt = "%m-%d" if step >= 86400 else "%m-%d %H:%M"
    return low, high, ticks, fmt


def _time_label(value: float, fmt: str) -> str:
    try:
        return time.strftime(fmt, time.gmtime(value))
    except (OverflowError, OSError, ValueError):  # a timestamp no calendar holds
        return f"{value:.4g}"


# -- drawing ----------------------------------------------------------------------------------------------

class _Frame:
    """The plot area of one figure and the data -> pixel transform."""

    def __init__(self, chart: Chart, x_limits: tuple[float, float], y_limits: tuple[float, float]) -> None:
        self.x0, self.x1 = LEFT, chart.width - RIGHT
        self.y0, self.y1 = TOP, chart.height - chart.bottom  # top, bottom in pixels
        self.x_limits, self.y_limits = x_limits, y_limits

    def px(self, xs: np.ndarray) -> np.ndarray:
        low, high = self.x_limits
        return self.x0 + (xs - low) / ((high - low) or 1.0) * (self.x1 - self.x0)

    def py(self, ys: np.ndarray) -> np.ndarray:
        low, high = self.y_limits
        return self.y1 - (ys - low) / ((high - low) or 1.0) * (self.y1 - self.y0)


def _open(chart: Chart, clip_id: str, frame: _Frame) -> list[str]:
    title = _text(chart.title, 120)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{chart.width}" height="{chart.height}" '
        f'viewBox="0 0 {chart.width} {chart.height}" role="img" aria-label="{title}" style="{FONT}">',
        f"<title>{title}</title>",
        f'<rect width="{chart.width}" height="{chart.height}" fill="#fff"/>',
        f'<clipPath id="{clip_id}"><rect x="{frame.x0}" y="{frame.y0}" width="{frame.x1 - frame.x0}" '
        f'height="{frame.y1 - frame.y0}"/></clipPath>',
    ]
    if title:
        parts.append(f'<text class="chart-title" x="{chart.width / 2:.0f}" y="19" text-anchor="middle" '
                     f'font-size="14">{title}</text>')
    return parts


def _y_axis(chart: Chart, frame: _Frame, ticks: list[float]) -> list[str]:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    parts = []
    for value in ticks:
        y = float(frame.py(np.float64(value)))
        parts.append(f'<line x1="{frame.x0}" x2="{frame.x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ec"/>')
        parts.append(f'<text class="y-tick" x="{frame.x0 - 6}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{_text(tick_label(value, step))}</text>')
    middle = (frame.y0 + frame.y1) / 2
    parts.append(f'<text class="y-label" x="16" y="{middle:.0f}" text-anchor="middle" font-size="12" '
                 f'transform="rotate(-90 16 {middle:.0f})">{_text(chart.y_label, 60)}</text>')
    return parts


def _frame_box(frame: _Frame) -> str:
    return (f'<rect x="{frame.x0}" y="{frame.y0}" width="{frame.x1 - frame.x0}" height="{frame.y1 - frame.y0}" '
            f'fill="none" stroke="#555"/>')


def _paths(frame: _Frame, arrays: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[str, int]]:
    """SVG path data per series through its finite points (a new M after each NaN/inf gap), and how many points
    each holds. All series go through numpy at once (a NaN between them), since a report draws ~1,000 series of
    ~200 points, and coordinates are tenths of a pixel as integers (drawn in a group scaled by 1/SCALE):
    formatting ints is several times cheaper than floats."""
    if not arrays:
        return []
    gap = np.array([np.nan])
    xs = np.concatenate([part for x, _ in arrays for part in (x, gap)])
    ys = np.concatenate([part for _, y in arrays for part in (y, gap)])
    keep = np.isfinite(xs) & np.isfinite(ys)
    # Far-off points (an axis range fixed by the caller, a value of 1e300) are clipped to a band around the
    # plot that the clipPath hides: SVG viewers choke on huge coordinates.
    px = np.clip(frame.px(np.clip(np.where(keep, xs, 0.0), -LIMIT, LIMIT)), -1e5, 1e5)
    py = np.clip(frame.py(np.clip(np.where(keep, ys, 0.0), -LIMIT, LIMIT)), -1e5, 1e5)
    both = np.empty(2 * len(px), dtype=np.int64)
    both[0::2] = np.rint(px * SCALE)
    both[1::2] = np.rint(py * SCALE)
    numbers = list(map(str, both.tolist()))
    # Runs of consecutive finite points, [begin, end); none crosses from one series to the next (the NaN).
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.view(np.int8), [0]]))).tolist()
    segments = iter(zip(edges[::2], edges[1::2]))
    segment = next(segments, None)
    result, offset = [], 0
    for x, _ in arrays:
        stop, words, points = offset + len(x), [], 0
        while segment is not None and segment[0] < stop:
            begin, end = segment
            words.append(f"M {numbers[2 * begin]} {numbers[2 * begin + 1]}")
            if end - begin > 1:
                words.append("L " + " ".join(numbers[2 * begin + 2: 2 * end]))
            points += end - begin
            segment = next(segments, None)
        result.append((" ".join(words), points))
        offset = stop + 1
    return result


def _legend(frame: _Frame, entries: list[tuple[str, str, bool]]) -> list[str]:
    """A box in the plot's top right corner: a line sample and the name of each entry."""
    if not entries:
        return []
    width = 30 + 6.2 * max(len(_text(name, NAME_CHARS)) for name, _, _ in entries)
    width = min(width, (frame.x1 - frame.x0) * 0.6)
    height = 8 + 14 * len(entries)
    x, y = frame.x1 - width - 6, frame.y0 + 6
    parts = [f'<g class="legend"><rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{height}" fill="#fff" '
             f'fill-opacity="0.85" stroke="#ccd"/>']
    for index, (name, color, dashed) in enumerate(entries):
        row = y + 11 + 14 * index
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(f'<g class="legend-entry"><line x1="{x + 5:.1f}" x2="{x + 21:.1f}" y1="{row - 4}" '
                     f'y2="{row - 4}" stroke="{color}" stroke-width="2"{dash}/><text x="{x + 26:.1f}" y="{row}" '
                     f'font-size="10">{_text(name, NAME_CHARS)}</text></g>')
    parts.append("</g>")
    return parts


def line_chart(chart: Chart, series: Sequence[Series], clip_id: str = "plot") -> str:
    """Lines on a step (or time) axis; a legend when `chart.legend` (else each line's name is its tooltip)."""
    arrays = [(np.asarray(s.xs, dtype=np.float64), np.asarray(s.ys, dtype=np.float64)) for s in series]

    def span(values: list[np.ndarray]) -> tuple[float, float]:
        finite = [np.clip(v[np.isfinite(v)], -LIMIT, LIMIT) for v in values]
        finite = [v for v in finite if v.size]
        if not finite:
            return math.nan, math.nan
        return float(min(v.min() for v in finite)), float(max(v.max() for v in finite))

    # Only points with both coordinates finite count for the limits (a NaN loss at step 5 does not stretch x).
    pairs = [(x[np.isfinite(x) & np.isfinite(y)], y[np.isfinite(x) & np.isfinite(y)]) for x, y in arrays]
    x_low, x_high = span([x for x, _ in pairs])
    y_low, y_high = chart.y_range if chart.y_range else span([y for _, y in pairs])
    if chart.x_time:
        if not math.isfinite(x_low):
            x_low = x_high = time.time()
        x_low, x_high, x_ticks, time_format = time_ticks(x_low, x_high)
    else:
        x_low, x_high, x_ticks = nice_ticks(x_low, x_high)
        time_format = ""
    if chart.y_range:
        _, _, y_ticks = nice_ticks(*chart.y_range)
        y_ticks = [t for t in y_ticks if chart.y_range[0] <= t <= chart.y_range[1]]
    else:
        y_low, y_high, y_ticks = nice_ticks(y_low, y_high)
    frame = _Frame(chart, (x_low, x_high), (y_low, y_high))
    parts = _open(chart, clip_id, frame)
    parts += _y_axis(chart, frame, y_ticks)
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for value in x_ticks:
        x = float(frame.px(np.float64(value)))
        label = _time_label(value, time_format) if chart.x_time else tick_label(value, x_step)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.y0}" y2="{frame.y1}" stroke="#e3e6ec"/>')
        parts.append(f'<text class="x-tick" x="{x:.1f}" y="{frame.y1 + 15}" text-anchor="middle" '
                     f'font-size="11">{_text(label)}</text>')
    parts.append(f'<text class="x-label" x="{(frame.x0 + frame.x1) / 2:.0f}" y="{chart.height - 8}" '
                 f'text-anchor="middle" font-size="12">{_text(chart.x_label, 60)}</text>')
    colors = PALETTE if chart.legend else gradient(len(series))
    parts.append(f'<g clip-path="url(#{clip_id})"><g transform="scale({1 / SCALE:g})" fill="none">')
    entries = []
    for index, (item, (data, points)) in enumerate(zip(series, _paths(frame, arrays))):
        color = item.color or colors[index % len(colors)]
        dashed = item.dashed or (chart.legend and index >= len(PALETTE))
        dash = f' stroke-dasharray="{5 * SCALE} {3 * SCALE}"' if dashed else ""
        parts.append(f'<path class="series" data-points="{points}" stroke="{color}" '
                     f'stroke-width="{item.width * SCALE:g}"{dash} d="{data}"><title>{_text(item.name)}</title></path>')
        entries.append((item.name, color, dashed))
    parts.append("</g></g>")
    parts.append(_frame_box(frame))
    if chart.legend:
        parts += _legend(frame, entries)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def bar_chart(chart: Chart, labels: Sequence[str], values: Sequence[float], color: str = "#3b6fd4",
              clip_id: str = "bars") -> str:
    """One bar per label (labels slanted under the axis); a non-finite value leaves its slot empty."""
    chart.bottom = max(chart.bottom, 96)  # room for the slanted labels
    finite = [min(max(v, -LIMIT), LIMIT) for v in values if math.isfinite(v)]
    low, high = min(finite + [0.0]), max(finite + [0.0])
    if low == high == 0.0:
        high = 1.0  # all zero (unpriced local runs): an axis from 0 to 1, bars of height 0
    y_low, y_high, y_ticks = nice_ticks(low, high)
    frame = _Frame(chart, (0.0, float(max(len(values), 1))), (y_low, y_high))
    parts = _open(chart, clip_id, frame)
    parts += _y_axis(chart, frame, y_ticks)
    slot = (frame.x1 - frame.x0) / max(len(values), 1)
    font = 9 if len(values) <= 15 else 7
    zero = float(frame.py(np.float64(0.0)))
    parts.append(f'<g clip-path="url(#{clip_id})">')
    for index, (label, value) in enumerate(zip(labels, values)):
        x = frame.x0 + slot * (index + 0.1)
        if math.isfinite(value):
            top = float(frame.py(np.float64(min(max(value, -LIMIT), LIMIT))))
            y, height = min(top, zero), abs(zero - top)
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" '
                         f'height="{height:.1f}" fill="{color}"><title>{_text(label)}: {_text(f"{value:.6g}")}'
                         f"</title></rect>")
    parts.append("</g>")
    parts.append(_frame_box(frame))
    for index, label in enumerate(labels):
        x = frame.x0 + slot * (index + 0.5)
        y = frame.y1 + 10
        parts.append(f'<text class="bar-label" x="{x:.1f}" y="{y}" text-anchor="end" font-size="{font}" '
                     f'transform="rotate(-30 {x:.1f} {y})">{_text(label, 24)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
