// The local dashboard: tabs and panels from /api/definition, data from /api/dashboards/<slug> every few seconds.
"use strict";

const UNITS = {
  percent: { suffix: "%", title: "%" },
  bytes: { suffix: "B", format: ".3s", title: "bytes" },
  bytes_per_second: { suffix: "B/s", format: ".3s", title: "bytes/s" },
  per_second: { suffix: "/s", format: ".3s", title: "per second" },
  seconds: { suffix: "s", format: ".3s", title: "seconds" },
  usd: { prefix: "$", format: ".4~g", title: "USD" },
  tokens_per_second: { suffix: " tok/s", format: ".3s", title: "tokens/s" },
  celsius: { suffix: " °C", title: "°C" },
  watts: { suffix: " W", title: "W" },
  hours: { suffix: " h", format: ".3~g", title: "hours" },
  count: { format: ",.0f", title: "" },
  none: { format: ".4~g", title: "" },
};

let definition = null;
let activeBoard = null;
let busy = false;

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
  (children || []).forEach((c) => node.append(c));
  return node;
}

function build() {
  const tabs = document.getElementById("tabs");
  const boards = document.getElementById("boards");
  definition.dashboards.forEach((board) => {
    const tab = el("button", { role: "tab", id: `tab-${board.slug}`, "data-board": board.slug, "aria-selected": "false" },
                   [board.title]);
    tab.addEventListener("click", () => select(board.slug));
    tabs.append(tab);
    const grid = el("div", { class: "grid" });
    board.panels.forEach((panel) => {
      const card = el("section", {
        class: `panel ${panel.kind}`, id: `panel-${board.slug}-${panel.id}`, "data-panel": panel.id, "data-state": "loading",
        style: `grid-column: span ${panel.width}`, title: panel.description || "",
      }, [el("span", { class: "source" }), el("h3", {}, [panel.title]), el("div", { class: "plot" }), el("div", { class: "empty" }), el("div", { class: "note" })]);
      grid.append(card);
    });
    boards.append(el("section", { class: "board", id: `board-${board.slug}`, role: "tabpanel" },
                     [el("p", {}, [board.description]), grid]));
  });
  const runSelect = document.getElementById("run");
  const unreadable = definition.unreadable || {};
  definition.runs.forEach((name) => runSelect.append(el("option", unreadable[name] ? { value: name, title: unreadable[name] } : { value: name },
                                                        [unreadable[name] ? `${name} (unreadable)` : name])));
  if (definition.default_run) runSelect.value = definition.default_run;
  runSelect.addEventListener("change", refresh);
}

function select(slug) {
  activeBoard = slug;
  document.querySelectorAll("#tabs button").forEach((b) => b.setAttribute("aria-selected", String(b.dataset.board === slug)));
  document.querySelectorAll(".board").forEach((b) => b.classList.toggle("active", b.id === `board-${slug}`));
  if (location.hash !== `#${slug}`) history.replaceState(null, "", `#${slug}`);
  refresh();
}

function lastValue(series) {
  for (let i = series.y.length - 1; i >= 0; i--) if (series.y[i] !== null) return series.y[i];
  return null;
}

function figure(panel, data) {
  const unit = UNITS[panel.unit] || UNITS.none;
  const base = { margin: { l: 60, r: 15, t: 10, b: 35 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
                 legend: { orientation: "h", y: -0.2 }, font: { size: 11 } };
  if (panel.kind === "stat") {
    const traces = data.series.map((s, i) => ({
      type: "indicator", mode: "number", value: lastValue(s), title: { text: s.name, font: { size: 12 } },
      number: { prefix: unit.prefix || "", suffix: unit.suffix || "", valueformat: unit.format || ".4~g",
                font: { size: 30, color: statColor(panel, lastValue(s)) } },
      domain: { row: 0, column: i },
    }));
    return { traces, layout: { ...base, margin: { l: 10, r: 10, t: 25, b: 5 }, grid: { rows: 1, columns: traces.length } } };
  }
  if (panel.kind === "bar") {
    // One bar per series (run or node), its latest value: the same for run-store and Prometheus data.
    const trace = { type: "bar", x: data.series.map((s) => s.name), y: data.series.map(lastValue), marker: { color: "#3b6fd4" },
                    hovertemplate: `%{x}: ${unit.prefix || ""}%{y:${unit.format || ".4~g"}}${unit.suffix || ""}<extra></extra>` };
    return { traces: [trace], layout: { ...base, yaxis: { title: { text: unit.title }, tickprefix: unit.prefix || "", tickformat: unit.format || "", automargin: true } } };
  }
  const traces = data.series.map((s) => ({ type: "scatter", mode: s.x.length > 1 ? "lines" : "markers", name: s.name,
                                           x: s.x, y: s.y, connectgaps: false }));
  const shapes = [], annotations = [];
  (panel.thresholds || []).forEach((t) => {
    shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: t.value, y1: t.value,
                  line: { color: t.color, width: 2, dash: "dash" } });
    annotations.push({ xref: "paper", x: 1, xanchor: "right", yref: "y", y: t.value, yanchor: "bottom", text: t.label,
                       showarrow: false, font: { color: t.color, size: 11 } });
  });
  const yaxis = { title: { text: unit.title }, ticksuffix: unit.suffix || "", tickprefix: unit.prefix || "",
                  tickformat: unit.format || "", rangemode: "tozero", automargin: true };
  if (panel.unit === "percent") yaxis.range = [0, 105];
  const bySteps = data.series.every((s) => s.x_kind === "step");
  const xaxis = bySteps ? { type: "linear", title: { text: "step" }, automargin: true } : { type: "date" };
  return { traces, layout: { ...base, xaxis, yaxis, shapes, annotations, showlegend: traces.length > 1 } };
}

function statColor(panel, value) {
  for (const t of panel.thresholds || []) {
    if (value === null) break;
    if ((t.bad === "below" && value < t.value) || (t.bad === "above" && value > t.value)) return t.color;
  }
  return "#1d2330";
}

// A run directory whose name is not UTF-8 reaches the page as Python's surrogateescape does (U+DC80..U+DCFF for
// each byte that is not UTF-8), which encodeURIComponent refuses (URIError): those go back as the bytes
// themselves (%FF), which the server decodes the same way; everything else as encodeURIComponent does.
function encodeRun(name) {
  let out = "";
  for (const ch of name) {
    const code = ch.codePointAt(0);
    out += code >= 0xdc80 && code <= 0xdcff ? "%" + (code - 0xdc00).toString(16).toUpperCase() : encodeURIComponent(ch);
  }
  return out;
}

async function refresh() {
  if (!activeBoard || busy) return;
  busy = true;
  const slug = activeBoard;
  const run = document.getElementById("run").value;
  const status = document.getElementById("status");
  try {
    const response = await fetch(`/api/dashboards/${slug}?run=${encodeRun(run)}`);
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    const board = definition.dashboards.find((b) => b.slug === slug);
    board.panels.forEach((panel) => {
      const card = document.getElementById(`panel-${slug}-${panel.id}`);
      const result = data.panels[panel.id];
      const plot = card.querySelector(".plot");
      card.querySelector(".source").textContent = result.series.length ? result.source : "";
      card.querySelector(".note").textContent = result.note || "";
      if (!result.series.length) {
        card.querySelector(".empty").textContent = result.message;
        card.dataset.state = "empty";
        Plotly.purge(plot);
        return;
      }
      card.dataset.state = "data";
      const fig = figure(panel, result);
      Plotly.react(plot, fig.traces, fig.layout, { displaylogo: false, responsive: true });
    });
    const runState = data.run_error ? ` is unreadable: ${data.run_error}` : "";
    status.textContent = `run ${data.run || "–"}${runState} · updated ${new Date(data.updated * 1000).toLocaleTimeString()}`;
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (error) {
    status.textContent = `update failed: ${error.message}`;
  } finally {
    busy = false;
  }
}

async function main() {
  const response = await fetch("/api/definition");
  definition = await response.json();
  build();
  const wanted = location.hash.slice(1);
  select(definition.dashboards.some((b) => b.slug === wanted) ? wanted : definition.dashboards[0].slug);
  // A link, a typed #slug or Back/Forward changes only the hash (no reload): follow it to that tab.
  window.addEventListener("hashchange", () => {
    const slug = location.hash.slice(1);
    if (slug !== activeBoard && definition.dashboards.some((b) => b.slug === slug)) select(slug);
  });
  setInterval(refresh, definition.refresh_ms);
}

main();
