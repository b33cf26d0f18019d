"""Weekly utilization review: `ddlc report utilization --since 7d` writes Markdown or HTML with SVG plots.

From the local run store: runs, steps, tokens, wall hours, cost (ddlc.dashboards.cost), GPU-hours when the
run recorded its GPU count, and loss / throughput / cost plots. With `prometheus` it also reads GPU
utilization per node (query_range over the window): mean utilization against the 80% target, GPU-hours,
idle nodes and the worst offenders. Without GPU data the report says so instead of printing zeros as facts.

    collect() -> UtilizationReport -> _plots() (SVG texts) + _blocks() -> _markdown()/_html()
              -> write_report(): each file to a temporary one beside it, then all renamed (all or nothing)
"""

from __future__ import annotations

import html
import math
import os
import re
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Optional
from urllib.parse import quote

from ddlc.dashboards.cost import Pricing, RunCost, cost_by_node, run_cost
from ddlc.dashboards.definition import GPU_UTILIZATION_TARGET_PERCENT, IDLE_GPU_UTILIZATION_PERCENT, IDLE_NODES
from ddlc.dashboards.downsample import minmax
from ddlc.dashboards.runs import RunRecord, load_runs
from ddlc.dashboards.svg_chart import Chart, Series, bar_chart, line_chart
from ddlc.errors import UserError
from ddlc.run_format import MAX_TIME, write_temp

if TYPE_CHECKING:  # urllib/http.client are only needed with --prometheus
    from ddlc.dashboards.column_cache import ColumnCache
    from ddlc.dashboards.prometheus import PrometheusClient

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_POINTS = 500  # per Prometheus series: plenty for a week's plot
PLOT_POINTS = 800  # per run and plot
LEGEND_RUNS = 15  # a legend of more runs than this hides the plot
BAR_RUNS = 40  # the cost bar chart shows the costliest runs
_SURROGATES = re.compile("[\ud800-\udfff]")
# C0/C1 control characters (tab and line ends excepted): a run name's ESC would colour the terminal that `cat`s the
# report, and XML/HTML forbid most of them. Shown as U+FFFD, as in the figures.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Markdown's inline syntax characters: backslash-escaped, `*bold*`, `` `code` ``, `[a](b)` and `~~x~~` in a run
# name stay text (CommonMark lets any ASCII punctuation be escaped so; `\|` also keeps a GFM table cell whole).
_MD_SYNTAX = re.compile(r"([\\`*_\[\]|~])")
MAX_SINCE_S = 50 * 365 * 86400  # --since longer than this reaches before any run (and before 1970)


def parse_since(text: str) -> float:
    """`7d`, `24h`, `90m`, `3600s`, `2w` -> seconds."""
    match = _DURATION.match(text) if len(text) <= 40 else None
    if not match or float(match.group(1)) <= 0:
        shown = text if len(text) <= 40 else text[:30] + "..."
        raise UserError(f"--since: {shown!r} is not a duration such as 7d, 24h, 90m (units s, m, h, d, w)")
    seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    if seconds > MAX_SINCE_S:  # the window's start must stay a date (and the epoch is 1970 anyway)
        raise UserError(f"--since: {text!r} is longer than {MAX_SINCE_S // (365 * 86400)} years")
    return seconds


@dataclass
class NodeUtilization:
    node: str
    mean_percent: float
    gpu_hours: float
    times: list[float] = field(default_factory=list)
    percents: list[float] = field(default_factory=list)


@dataclass
class UtilizationReport:
    start: float
    end: float
    runs: list[RunRecord]
    costs: list[RunCost]
    nodes: list[NodeUtilization]  # empty without GPU data
    source: str  # "run store" or "run store + Prometheus <url>"
    prometheus_cost: dict[str, float] = field(default_factory=dict)
    unreadable: list[RunRecord] = field(default_factory=list)  # named in the report with the reason
    idle_cost: Optional[dict[str, float]] = None  # node -> USD while no job ran on it (Prometheus); None: unknown

    @property
    def has_gpu_data(self) -> bool:
        return bool(self.nodes)

    @property
    def gpu_hours(self) -> float:
        if self.nodes:
            return sum(n.gpu_hours for n in self.nodes)
        return sum(run.gpus * run.wall_seconds / 3600.0 for run in self.runs)

    @property
    def mean_utilization(self) -> Optional[float]:
        if not self.nodes:
            return None
        total_hours = sum(n.gpu_hours for n in self.nodes)
        if total_hours == 0:
            return None
        return sum(n.mean_percent * n.gpu_hours for n in self.nodes) / total_hours

    @property
    def idle_nodes(self) -> list[NodeUtilization]:
        return [n for n in self.nodes if n.mean_percent < IDLE_GPU_UTILIZATION_PERCENT]

    @property
    def total_cost(self) -> float:
        if self.prometheus_cost:
            return sum(self.prometheus_cost.values())
        return sum(c.usd_total for c in self.costs)


def collect(
    runs_dir: Path | str,
    since_seconds: float,
    pricing: Pricing,
    run_names: Optional[list[str]] = None,
    prometheus: Optional[PrometheusClient] = None,
    now: Optional[float] = None,
    cache: Optional[ColumnCache] = None,
) -> UtilizationReport:
    end = time.time() if now is None else now
    start = end - since_seconds
    every = load_runs(runs_dir, since=start, names=run_names or None, cache=cache)
    if run_names:
        missing = sorted(set(run_names) - {r.name for r in every})
        if missing:
            shown = ", ".join(missing)
            raise UserError(f"--run: no run named {shown[:200]} with steps in the last "
                            f"{since_seconds / 86400:g} days under {runs_dir}")
    every = [pricing.check(run) for run in every]  # an unpriced instance type leaves out that run only
    runs = [run for run in every if run.readable]
    unreadable = [run for run in every if not run.readable]
    costs = [run_cost(run, pricing) for run in runs if run.has_steps]
    nodes: list[NodeUtilization] = []
    prometheus_cost: dict[str, float] = {}
    idle_cost: Optional[dict[str, float]] = None
    source = "local run store"
    if prometheus is not None:
        source = f"local run store + Prometheus {prometheus.url}"
        step = max(since_seconds / MAX_POINTS, 60.0)
        means = {labels.get("node", "?"): (t, v) for labels, t, v in
                 prometheus.query_range("100 * avg by (node) (ddlc_gpu_utilization_ratio)", start, end, step)}
        counts = {labels.get("node", "?"): v for labels, _, v in
                  prometheus.query_range("count by (node) (ddlc_gpu_utilization_ratio)", start, end, step)}
        for node, (times, percents) in sorted(means.items()):
            finite = [p for p in percents if math.isfinite(p)]
            gpus = counts.get(node, [])
            gpu_hours = sum(c for c in gpus if math.isfinite(c)) * step / 3600.0
            weights = [c if math.isfinite(c) else 0.0 for c in gpus] or [1.0] * len(percents)
            pairs = [(p, w) for p, w in zip(percents, weights) if math.isfinite(p)]
            mean = sum(p * w for p, w in pairs) / sum(w for _, w in pairs) if pairs and sum(w for _, w in pairs) else (
                sum(finite) / len(finite) if finite else math.nan)
            nodes.append(NodeUtilization(node, mean, gpu_hours, times, percents))
        for labels, _, values in prometheus.query_range("max by (run) (ddlc_run_cost_usd)", start, end, step):
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                prometheus_cost[labels.get("run", "?")] = max(finite)
        # The hourly price of each node whose agent was up while no rank reported from it, integrated.
        idle_cost = {labels.get("node", "?"): sum(v for v in values if math.isfinite(v)) * step / 3600.0
                     for labels, _, values in prometheus.query_range(IDLE_NODES, start, end, step)}
    return UtilizationReport(start, end, runs, costs, nodes, source, prometheus_cost, unreadable, idle_cost)


# -- plots -------------------------------------------------------------------------------------------------

def _plots(report: UtilizationReport) -> dict[str, str]:
    """The report's figures as SVG documents: name -> SVG text (written by write_report as `<name>.svg`)."""
    plots: dict[str, str] = {}

    def save(svg: str, name: str) -> None:
        plots[name] = svg

    with_steps = [run for run in report.runs if run.has_steps]
    if with_steps:
        legend = len(with_steps) <= LEGEND_RUNS  # more lines than that: no legend, oldest dark to newest light
        # Each run cut to what an 880 px figure shows (min and max per bucket keep its spikes).
        for name, key, ylabel in (("loss", "loss", "training loss"), ("throughput", "tokens_per_s", "tokens / s")):
            series = [Series(run.name, *minmax(run.columns["step"], run.column(key), PLOT_POINTS)) for run in with_steps]
            title = "" if legend else f"{len(with_steps)} runs (oldest dark, newest light)"
            save(line_chart(Chart(title, "step", ylabel, legend=legend), series), name)
    if report.costs:
        top = sorted(report.costs, key=lambda c: -c.usd_total)[:BAR_RUNS]
        title = ("cost by run" if len(top) == len(report.costs)
                 else f"cost by run: the {len(top)} costliest of {len(report.costs)}")
        save(bar_chart(Chart(title, "", "USD"), [c.run for c in top], [c.usd_total for c in top]), "cost")
    if report.nodes:
        series = [Series(node.node, node.times, node.percents, width=1.5) for node in report.nodes]
        if series:
            first = min((t for node in report.nodes for t in node.times[:1]), default=report.start)
            last = max((t for node in report.nodes for t in node.times[-1:]), default=report.end)
            series.append(Series(f"{GPU_UTILIZATION_TARGET_PERCENT:g}% target", [first, last],
                                 [GPU_UTILIZATION_TARGET_PERCENT] * 2, color="orange", dashed=True, width=1.5))
        save(line_chart(Chart("", "time (UTC)", "GPU utilization (%)", x_time=True, y_range=(0, 105)), series),
             "gpu_utilization")
    return plots


# -- documents ---------------------------------------------------------------------------------------------

Block = tuple  # ("h1"|"h2"|"p", text) | ("table", headers, rows) | ("img", alt, relative path)


def _usd(value: Optional[float]) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"${value:,.2f}" if value >= 1 else f"${value:.3g}"


def _when(ts: Optional[float]) -> str:
    """A time as a UTC date; a value that is none (NaN, 1e300, before 1970) as "–" rather than a traceback (the
    run store rejects such times: this is the last line of defence)."""
    try:
        if ts is None or not 0 <= ts <= MAX_TIME:
            return "–"
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, ValueError, OSError):
        return "–"


def _blocks(report: UtilizationReport, plots: dict[str, Path], base: Path) -> list[Block]:
    rel = {name: path.relative_to(base).as_posix() for name, path in plots.items()}
    target = GPU_UTILIZATION_TARGET_PERCENT
    blocks: list[Block] = [
        ("h1", "GPU utilization review"),
        ("p", f"Window: {_when(report.start)} to {_when(report.end)}. Source: {report.source}. "
              f"Runs in the window: {len(report.runs)}"
              + (f", and {len(report.unreadable)} unreadable (listed below)." if report.unreadable else ".")),
        ("h2", "Summary"),
    ]
    mean = report.mean_utilization
    blocks.append(("table", ["measure", "value"], [
        ["GPU-hours", f"{report.gpu_hours:,.2f}"],
        ["mean GPU utilization", f"{mean:.1f}% (target {target:g}%)" if mean is not None else "no GPU utilization data"],
        ["idle nodes", ", ".join(n.node for n in report.idle_nodes) or ("none" if report.nodes else "no GPU utilization data")],
        ["cost", _usd(report.total_cost)],
        ["idle node cost", _usd(sum(report.idle_cost.values())) if report.idle_cost else
         "unknown (needs --prometheus and agents started with --instance-type)"],
        ["steps", f"{sum(c.steps for c in report.costs):,}"],
        ["tokens", f"{sum(c.tokens for c in report.costs):,.0f}"],
    ]))
    blocks.append(("h2", "GPU utilization"))
    if not report.has_gpu_data:
        blocks.append(("p", "No GPU utilization data exists for this window: the run store records no GPU "
                            "utilization, and no Prometheus URL was given (or it had no ddlc_gpu_utilization_ratio "
                            "series). Pass --prometheus URL on a cluster to include it. GPU-hours above count only "
                            "runs that recorded their GPU count."))
    else:
        if mean is not None:
            verdict = "meets" if mean >= target else "is below"
            blocks.append(("p", f"Mean utilization {mean:.1f}% {verdict} the {target:g}% target."))
        blocks.append(("img", "GPU utilization per node", rel["gpu_utilization"]))
        worst = sorted(report.nodes, key=lambda n: n.mean_percent)[:5]
        blocks.append(("h2", "Worst offenders"))
        blocks.append(("table", ["node", "mean utilization", "GPU-hours", "below target"], [
            [n.node, f"{n.mean_percent:.1f}%", f"{n.gpu_hours:.2f}", "yes" if n.mean_percent < target else "no"]
            for n in worst
        ]))
    blocks.append(("h2", "Runs"))
    if report.costs:
        blocks.append(("table",
                       ["run", "started", "wall hours", "steps", "tokens", "instance type", "nodes", "cost",
                        "per 1M tokens", "per step"],
                       [[c.run, _when(run.start_time), f"{c.wall_hours:.4f}", f"{c.steps:,}", f"{c.tokens:,.0f}",
                         c.instance_type, str(c.num_nodes), _usd(report.prometheus_cost.get(c.run, c.usd_total)),
                         _usd(c.usd_per_1m_tokens), _usd(c.usd_per_step)]
                        for c, run in zip(report.costs, [r for r in report.runs if r.has_steps])]))
        if not report.has_gpu_data:
            most_expensive = max(report.costs, key=lambda c: c.usd_per_1m_tokens or 0.0)
            blocks.append(("p", f"Highest cost per 1M tokens: {most_expensive.run} "
                                f"({_usd(most_expensive.usd_per_1m_tokens)})."))
        blocks.append(("h2", "Cost by node"))
        blocks.append(("table", ["node", "cost"], [[n, _usd(v)] for n, v in sorted(cost_by_node(report.costs).items())]))
    if report.idle_cost:
        blocks.append(("h2", "Idle node cost"))
        blocks.append(("p", "What each node cost while its agent was up and no training rank reported from it "
                            "(its hourly price x those hours, from Prometheus)."))
        blocks.append(("table", ["node", "idle cost"], [[n, _usd(v)] for n, v in
                                                         sorted(report.idle_cost.items(), key=lambda kv: -kv[1])]))
    if report.costs:
        blocks.append(("h2", "Plots"))
        for name, alt in (("loss", "Training loss"), ("throughput", "Throughput (tokens/s)"), ("cost", "Cost by run")):
            if name in rel:
                blocks.append(("img", alt, rel[name]))
    else:
        blocks.append(("p", "No run logged a step in this window."))
    if report.unreadable:
        blocks.append(("h2", "Unreadable runs"))
        blocks.append(("p", "These runs have a malformed file and are left out of every figure above."))
        blocks.append(("table", ["run", "reason"], [[run.name, run.error] for run in report.unreadable]))
    return blocks


def _md(text: object) -> str:
    """Text for Markdown: on one line, and no HTML (Markdown passes `<script>` in a run name through as markup)."""
    return _MD_SYNTAX.sub(r"\\\1", html.escape(" ".join(str(text).split()), quote=False))


def _url(path: str) -> str:
    """A relative link to a plot: percent-encoded from the file name's bytes (a non-UTF-8 report name keeps its
    bytes as lone surrogates, which `quote` alone cannot encode)."""
    return quote(path, errors="surrogateescape")


def _markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {_md(block[1])}", ""]
        elif kind == "h2":
            lines += [f"## {_md(block[1])}", ""]
        elif kind == "p":
            lines += [_md(block[1]), ""]
        elif kind == "img":
            lines += [f"![{_md(block[1])}]({_url(block[2])})", ""]
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines.append("| " + " | ".join(headers) + " |")
            lines.append("|" + "---|" * len(headers))
            lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
            lines.append("")
    return "\n".join(lines)


def _html(blocks: list[Block]) -> str:
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "img":
            body.append(f'<figure><img src="{html.escape(_url(block[2]))}" alt="{html.escape(block[1])}">'
                        f"<figcaption>{html.escape(block[1])}</figcaption></figure>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2rem auto;color:#1d2330}"
             "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccd;padding:.25rem .6rem;"
             "text-align:left}img{max-width:100%}")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>GPU utilization review</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(report: UtilizationReport, output: Path | str) -> Path:
    """Write `output` (.md or .html) and its SVG plots into `<output stem>_files/` next to it.

    All or nothing: every file goes to a temporary file in its own directory first, and all are renamed over
    the old ones only once every one was written (plots first, the document last), so a full disk or a file
    size limit leaves the previous report whole. Whatever stands in the way (a directory named like the report
    or one of its plots, a file named like the plots' folder) is found before anything is written."""
    out = Path(output)
    if out.suffix.lower() not in (".md", ".html", ".htm"):
        raise UserError(f"-o: {out} must end in .md or .html")
    files_dir = out.parent / f"{out.stem}_files"
    svgs = _plots(report)
    plots = {name: files_dir / f"{name}.svg" for name in svgs}
    blocks = _blocks(report, plots, out.parent)
    text = _markdown(blocks) if out.suffix.lower() == ".md" else _html(blocks)
    # A run directory whose name is not UTF-8 holds lone surrogates (Python's stand-ins for its bytes), which
    # no encoder writes: shown as U+FFFD, as in the figures, rather than a traceback.
    text = _CONTROLS.sub("\ufffd", _SURROGATES.sub("\ufffd", text))
    writes = [(plots[name], svg) for name, svg in svgs.items()] + [(out, text)]
    check_output(out, bool(plots))
    for path, _ in writes:
        _check_destination(path)
    where = out.parent
    temps: list[tuple[str, Path]] = []
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if plots:
            where = files_dir
            files_dir.mkdir(exist_ok=True)
        for path, content in writes:
            where = path
            temps.append((write_temp(path, content), path))
        for temp, path in temps:
            where = path
            os.replace(temp, path)
    except OSError as error:  # a folder under a file, no permission, read-only or full disk, a file size limit
        raise UserError(f"-o: cannot write {where}: {error.strerror or error}") from None
    finally:
        for temp, _ in temps:  # those not renamed (all of them after a failed write)
            try:
                os.unlink(temp)
            except OSError:
                pass
    return out


def check_output(output: Path | str, with_plots: bool = True) -> None:
    """A UserError, before any work, when the report file or its plots' folder cannot be written where asked."""
    out = Path(output)
    _check_destination(out)
    if with_plots:
        _check_destination(out.parent / f"{out.stem}_files", directory=True)


def _check_destination(path: Path, directory: bool = False) -> None:
    """A UserError when something other than what write_report puts at `path` is there already."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    except OSError as error:  # a path through a file ("not a directory"), no permission
        raise UserError(f"-o: cannot write {path}: {error.strerror or error}") from None
    if directory and not stat.S_ISDIR(info.st_mode):
        raise UserError(f"-o: {path} is in the way: the report's plots go into a directory of that name")
    if not directory and not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise UserError(f"-o: {path} is {kind}; the report writes a file there")
