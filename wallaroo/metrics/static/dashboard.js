/*
 * dashboard.js: the live wallaroo metrics dashboard (index.html's script).
 *
 * It polls the metrics server's JSON API: /api/metrics every second, /api/history every five
 * seconds and /api/graph once per app; it draws the dataflow graph in SVG and fills the summary,
 * pipeline, stage, worker and checkpoint panels in place (table rows are kept from one update to
 * the next, so an expanded row stays expanded). Vanilla JS, no libraries.
 *
 * A failed fetch never escapes the poll loops: it shows as "disconnected" in the status line.
 * Any uncaught error is appended to #errors, where the end-to-end test reads it.
 */
"use strict";

const METRICS_PERIOD_MS = 1000;
const HISTORY_PERIOD_MS = 5000;
const HISTORY_WARMUP_PERIOD_MS = 1000;   // while the history is short, so charts fill in fast
const HISTORY_WARMUP_POINTS = 10;
const FETCH_TIMEOUT_MS = 4000;
const HISTORY_SPAN_S = 300;
const PERCENTILES = ["p50", "p95", "p99", "p99.9", "p99.99"];
const SUB_STAGE_KINDS = new Set(["decoder", "encoder", "event_time"]);
const SVG_NS = "http://www.w3.org/2000/svg";

// graph geometry, in CSS pixels
const NODE_W = 184;
const NODE_H = 66;
const GAP_X = 82;
const GAP_Y = 22;
const GRAPH_PAD = 14;

const state = {
  graph: null,          // the last /api/graph
  metrics: null,        // the last good /api/metrics
  history: null,        // the last good /api/history
  historyVersion: 0,    // bumped on every new history: rows redraw their sparklines then
  failure: null,        // why the last /api/metrics poll failed, or null
  lastSuccess: 0,       // Date.now() of the last good /api/metrics
};

// ---------------------------------------------------------------------------------------------
// errors: shown in the page (a test reads #errors), never swallowed

function reportError(text) {
  const box = document.getElementById("errors");
  box.append(el("div", {}, text));
  box.hidden = false;
}

function describeReason(reason) {
  return reason instanceof Error ? (reason.stack || String(reason)) : String(reason);
}

window.addEventListener("error", (event) => {
  reportError(`error: ${event.message} (${event.filename}:${event.lineno}:${event.colno})`);
});
window.addEventListener("unhandledrejection", (event) => {
  reportError(`unhandled rejection: ${describeReason(event.reason)}`);
});

// ---------------------------------------------------------------------------------------------
// DOM helpers

/** Set attributes; null, undefined and false leave one out, true sets it empty. */
function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  return node;
}

/** An HTML element with attributes and children (nodes or strings). */
function el(tag, attrs = {}, ...children) {
  const node = setAttrs(document.createElement(tag), attrs);
  node.append(...children);
  return node;
}

/** An SVG element with attributes and children (nodes or strings). */
function svgEl(tag, attrs = {}, ...children) {
  const node = setAttrs(document.createElementNS(SVG_NS, tag), attrs);
  node.append(...children);
  return node;
}

/** Change a node's text only when it differs (no needless DOM churn every second). */
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function byId(id) {
  return document.getElementById(id);
}

// ---------------------------------------------------------------------------------------------
// formatting

const integerFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimalFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

function formatCount(value) {
  return integerFormat.format(Number(value) || 0);
}

/** Messages per second: "1,234/s" (one decimal below 100/s). */
function formatRate(value) {
  const rate = Number(value) || 0;
  return `${(rate >= 100 ? integerFormat : decimalFormat).format(rate)}/s`;
}

/** A short rate for chart labels: "950/s", "12k/s", "1.2M/s". */
function formatRateShort(value) {
  const rate = Number(value) || 0;
  if (rate >= 1e6) return `${trimNumber(rate / 1e6)}M/s`;
  if (rate >= 1e3) return `${trimNumber(rate / 1e3)}k/s`;
  return `${trimNumber(rate)}/s`;
}

/** Two significant digits at most, without a trailing ".0": 1, 2.1, 16, 131. */
function trimNumber(value) {
  return value >= 10 ? String(Math.round(value)) : String(Math.round(value * 10) / 10);
}

const TIME_UNITS = [[1e9, "s"], [1e6, "ms"], [1e3, "µs"], [1, "ns"]];

/** Nanoseconds in the largest unit that keeps the value at 1 or more. */
function splitDuration(ns) {
  for (const [size, unit] of TIME_UNITS) {
    if (ns >= size) return [ns / size, unit];
  }
  return [ns, "ns"];
}

/** A latency with three significant digits: "850 ns", "1.10 µs", "52.0 µs", "4.00 ms". */
function formatDuration(ns) {
  if (!Number.isFinite(ns) || ns <= 0) return "–";
  let [value, unit] = splitDuration(ns);
  // 999.7 µs rounds to "1000 µs": say "1.00 ms" instead
  if (unit !== "s" && Number(value.toPrecision(3)) >= 1000) [value, unit] = splitDuration(ns * 1.001);
  return unit === "ns" ? `${Math.round(value)} ns` : `${value.toPrecision(3)} ${unit}`;
}

/** A bin edge for an axis: "512ns", "1µs", "4.1µs", "2.1ms". */
function formatDurationShort(ns) {
  const [value, unit] = splitDuration(ns);
  return `${trimNumber(value)}${unit}`;
}

function formatMiB(bytes) {
  return `${decimalFormat.format((Number(bytes) || 0) / 1048576)} MiB`;
}

function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

function formatPercent(share) {
  const percent = (Number(share) || 0) * 100;
  return `${percent >= 10 || percent === 0 ? Math.round(percent) : percent.toFixed(1)}%`;
}

/** Seconds as "42 s", "3 min 12 s", "2 h 05 min". */
function formatUptime(seconds) {
  const s = Math.floor(Number(seconds) || 0);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor(s / 60) % 60).padStart(2, "0")} min`;
}

// ---------------------------------------------------------------------------------------------
// fetching and the poll loops

async function fetchJson(path) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
  try {
    const response = await fetch(path, { cache: "no-store", signal: controller.signal });
    if (!response.ok) throw new Error(`${path} answered HTTP ${response.status}`);
    return await response.json();
  } finally {
    clearTimeout(timer);
  }
}

/** A failed fetch in words, for the status line. */
function failureText(error) {
  if (error.name === "AbortError") return `no answer within ${FETCH_TIMEOUT_MS / 1000} s`;
  if (error instanceof TypeError) return "the metrics server cannot be reached";
  if (error instanceof SyntaxError) return "the metrics server sent invalid JSON";
  return error.message;
}

/** Run ``poll`` now and then again and again, ``period()`` ms after the start of each run:
 * an exception in it still reaches the error handlers, but the loop goes on. */
function every(period, poll) {
  const run = async () => {
    const started = Date.now();
    try {
      await poll();
    } finally {
      setTimeout(run, Math.max(0, started + period() - Date.now()));
    }
  };
  run();
}

async function pollMetrics() {
  try {
    const metrics = await fetchJson("/api/metrics");
    if (graphOutdated(metrics)) state.graph = await fetchJson("/api/graph");
    state.metrics = metrics;
    state.failure = null;
    state.lastSuccess = Date.now();
  } catch (error) {
    state.failure = failureText(error);
  }
  renderAll();   // outside the try: a bug in rendering is reported, not taken for a failed fetch
}

/** Whether the graph must be fetched again: none yet, another app, or workers that have
 * reported since (the sinks' names in the graph are the ones the workers report). */
function graphOutdated(metrics) {
  const graph = state.graph;
  return !graph || graph.app !== metrics.app
    || (graph.workers ?? []).length !== (metrics.workers ?? []).length;
}

async function pollHistory() {
  try {
    state.history = await fetchJson("/api/history");
    state.historyVersion += 1;
  } catch {
    return;   // pollMetrics tells the user the server is away; keep the last history
  }
  if (state.metrics) renderAll();
}

// ---------------------------------------------------------------------------------------------
// rendering: the whole page from the state

function renderAll() {
  renderStatus();
  const metrics = state.metrics;
  if (!metrics) return;
  renderHeader(metrics);
  renderSummary(metrics);
  if (state.graph) renderGraph(state.graph, metrics);
  pipelineRows.render(metrics.pipelines ?? []);
  stageRows.render(metrics.stages ?? []);
  workerRows.render(metrics.workers ?? []);
  renderCheckpoints(metrics.checkpoints);
}

/** connected / stale / disconnected, with the reason. */
function connectionState() {
  const metrics = state.metrics;
  if (state.failure) {
    return ["disconnected", `disconnected: ${state.failure}; retrying every second`];
  }
  if (!metrics) return ["connecting", "connecting…"];
  const workers = metrics.workers ?? [];
  const limit = Math.max(3, 3 * (metrics.interval_s || 1));
  const late = workers.filter((worker) => worker.report_age_s > limit);
  if (late.length) {
    const names = late.map((w) => `${w.name} (${Math.round(w.report_age_s)} s ago)`).join(", ");
    return ["stale", `stale: no recent report from ${names}`];
  }
  if (workers.length === 0) return ["stale", "connected; waiting for the first worker report"];
  if (workers.length < metrics.workers_expected) {
    return ["stale", `connected; ${workers.length} of ${metrics.workers_expected} workers reporting`];
  }
  return ["connected", "connected"];
}

function renderStatus() {
  const [name, text] = connectionState();
  const status = byId("status");
  if (status.dataset.state !== name) status.dataset.state = name;
  setText(byId("status-text"), text);
  document.body.classList.toggle("is-disconnected", name === "disconnected");
  if (state.lastSuccess) {
    const ago = (Date.now() - state.lastSuccess) / 1000;
    const metrics = state.metrics;
    setText(byId("meta"), `uptime ${formatUptime(metrics.uptime_s)} · workers report every ` +
      `${decimalFormat.format(metrics.interval_s)} s · updated ${ago < 1.5 ? "just now" : `${Math.round(ago)} s ago`}`);
  }
}

function renderHeader(metrics) {
  const name = metrics.app || "(unnamed app)";
  setText(byId("app-name"), name);
  const title = `${name} · wallaroo metrics`;
  if (document.title !== title) document.title = title;
}

function renderSummary(metrics) {
  const sources = (metrics.stages ?? []).filter((stage) => stage.kind === "source");
  const pipelines = metrics.pipelines ?? [];
  const workers = metrics.workers ?? [];
  const sum = (items, key) => items.reduce((total, item) => total + (Number(item[key]) || 0), 0);
  setText(byId("sum-ingest"), formatRate(sum(sources, "rate")));
  setText(byId("sum-ingest-total"), `${formatCount(sum(sources, "messages"))} messages in all`);
  setText(byId("sum-delivered"), formatRate(sum(pipelines, "rate")));
  setText(byId("sum-delivered-total"), `${formatCount(sum(pipelines, "messages"))} messages in all`);
  const slowest = pipelines.reduce((worst, pipeline) =>
    (!worst || (pipeline.latency_ns?.p99 ?? 0) > (worst.latency_ns?.p99 ?? 0) ? pipeline : worst), null);
  setText(byId("sum-p99"), formatDuration(slowest?.latency_ns?.p99));
  setText(byId("sum-p99-pipeline"), slowest ? `${slowest.name} → ${slowest.sink}` : "");
  setText(byId("sum-workers"), `${workers.length} of ${metrics.workers_expected ?? workers.length}`);
  const cpu = sum(workers, "cpu_percent");
  setText(byId("sum-cpu"), workers.length ? `${Math.round(cpu)}% CPU · ${formatMiB(sum(workers, "rss_bytes"))} RSS` : "");
}

// ---------------------------------------------------------------------------------------------
// the dataflow graph

/** Each node's depth: the length of the longest path to it from a source. */
function nodeDepths(nodes, edges) {
  const depth = new Map(nodes.map((node) => [node.id, 0]));
  const waiting = new Map(nodes.map((node) => [node.id, 0]));   // parents not yet placed
  const children = new Map(nodes.map((node) => [node.id, []]));
  for (const edge of edges) {
    if (!depth.has(edge.from) || !depth.has(edge.to)) continue;
    children.get(edge.from).push(edge.to);
    waiting.set(edge.to, waiting.get(edge.to) + 1);
  }
  const ready = nodes.filter((node) => waiting.get(node.id) === 0).map((node) => node.id);
  while (ready.length) {
    const id = ready.shift();
    for (const child of children.get(id)) {
      depth.set(child, Math.max(depth.get(child), depth.get(id) + 1));
      waiting.set(child, waiting.get(child) - 1);
      if (waiting.get(child) === 0) ready.push(child);
    }
  }
  return depth;
}

/** Box positions, left to right by depth. Within a column a node wants the mean height of its
 * parents (so a chain stays on one line); nodes are then pushed down until none overlap. */
function layoutGraph(graph) {
  const depth = nodeDepths(graph.nodes, graph.edges);
  const parents = new Map(graph.nodes.map((node) => [node.id, []]));
  for (const edge of graph.edges) parents.get(edge.to)?.push(edge.from);
  const columns = [];
  graph.nodes.forEach((node, index) => (columns[depth.get(node.id)] ??= []).push({ node, index }));

  const top = new Map();   // node id -> y of the box, without padding
  const pitch = NODE_H + GAP_Y;
  for (const column of columns.filter(Boolean)) {
    for (const item of column) {
      const placed = parents.get(item.node.id).filter((id) => top.has(id)).map((id) => top.get(id));
      item.want = placed.length ? placed.reduce((a, b) => a + b, 0) / placed.length : 0;
    }
    column.sort((a, b) => a.want - b.want || a.index - b.index);
    let next = 0;
    for (const item of column) {
      const y = Math.max(item.want, next);
      top.set(item.node.id, y);
      next = y + pitch;
    }
  }
  const positions = new Map();
  for (const node of graph.nodes) {
    positions.set(node.id, {
      x: GRAPH_PAD + depth.get(node.id) * (NODE_W + GAP_X),
      y: GRAPH_PAD + top.get(node.id),
    });
  }
  const columnCount = Math.max(1, columns.length);
  const width = 2 * GRAPH_PAD + columnCount * NODE_W + (columnCount - 1) * GAP_X;
  const height = 2 * GRAPH_PAD + Math.max(0, ...top.values()) + NODE_H;
  return { positions, width, height };
}

/** Cut a label to fit ``pixels`` at roughly 7.4 px a character (13 px system font). */
function fitLabel(text, pixels) {
  const max = Math.floor(pixels / 7.4);
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

function arrowMarker(id) {
  return svgEl("marker", { id, class: id, viewBox: "0 0 10 10", refX: 9, refY: 5,
                           markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" },
    svgEl("path", { d: "M0,1 L10,5 L0,9 z" }));
}

function drawEdge(edge, from, to) {
  const x1 = from.x + NODE_W;
  const y1 = from.y + NODE_H / 2;
  const x2 = to.x - 2;
  const y2 = to.y + NODE_H / 2;
  const mid = (x1 + x2) / 2;
  const kind = edge.exchange ? "exchange" : "local";
  const group = svgEl("g", { class: `edge ${kind}`, "data-from": edge.from, "data-to": edge.to },
    svgEl("path", { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
                    "marker-end": `url(#arrow-${kind})` }));
  if (edge.exchange) {
    group.append(svgEl("text", { class: "edge-label", x: mid, y: (y1 + y2) / 2 - 7, "text-anchor": "middle" },
      "exchange"));
  }
  return group;
}

/** A node's box; its rate and back-pressure texts are filled by updateGraph. Clicking it jumps
 * to its row (a sink's row is its pipeline's). */
function drawNode(node, at) {
  const title = svgEl("title", {}, `${node.name} (${node.kind}, pipeline ${node.pipeline})`);
  const rate = svgEl("text", { class: "node-rate", x: 12, y: 55, "data-node-rate": node.id }, "–");
  const badge = svgEl("text", { class: "node-badge", x: NODE_W - 10, y: 18, "text-anchor": "end" });
  const box = svgEl("g", { class: `node kind-${node.kind}`, "data-node": node.id,
                           transform: `translate(${at.x},${at.y})` },
    title,
    svgEl("rect", { class: "node-box", width: NODE_W, height: NODE_H, rx: 9 }),
    svgEl("rect", { class: "node-stripe", x: 0, y: 10, width: 4, height: NODE_H - 20, rx: 2 }),
    svgEl("text", { class: "node-kind", x: 12, y: 18 }, node.kind.replace("_", " ").toUpperCase()),
    svgEl("text", { class: "node-name", x: 12, y: 37 }, fitLabel(node.name, NODE_W - 22)),
    rate, badge);
  return { link: svgEl("a", { href: `#row-${node.id}` }, box), box, title, rate, badge, node };
}

const drawn = { graph: null, nodes: new Map() };   // what drawGraph made, for updateGraph

function drawGraph(graph) {
  const svg = byId("graph");
  const layout = layoutGraph(graph);
  setAttrs(svg, { width: layout.width, height: layout.height, viewBox: `0 0 ${layout.width} ${layout.height}` });
  // fit the panel's width, but shrink to 70% at most: below that the panel scrolls sideways
  svg.style.maxWidth = `${layout.width}px`;
  svg.style.minWidth = `${Math.round(layout.width * 0.7)}px`;
  const edges = svgEl("g", { class: "edges" });
  for (const edge of graph.edges) {
    const from = layout.positions.get(edge.from);
    const to = layout.positions.get(edge.to);
    if (from && to) edges.append(drawEdge(edge, from, to));
  }
  const nodes = svgEl("g", { class: "nodes" });
  drawn.nodes.clear();
  for (const node of graph.nodes) {
    const parts = drawNode(node, layout.positions.get(node.id));
    drawn.nodes.set(node.id, parts);
    nodes.append(parts.link);
  }
  svg.replaceChildren(svgEl("defs", {}, arrowMarker("arrow-local"), arrowMarker("arrow-exchange")), edges, nodes);
  byId("graph-empty").hidden = graph.nodes.length > 0;
  setText(byId("graph-empty"), "The graph has no nodes.");
  drawn.graph = graph;
}

/** Node id -> [{worker, share}] for each back-pressure entry with a share above 0. */
function backpressureByNode(workers) {
  const held = new Map();
  for (const worker of workers) {
    for (const entry of worker.backpressure ?? []) {
      if (!(entry.share > 0)) continue;
      if (!held.has(entry.by)) held.set(entry.by, []);
      held.get(entry.by).push({ worker: worker.name, share: entry.share });
    }
  }
  return held;
}

/** The live rate of a graph node: its stage's, or for a sink its pipeline's. */
function nodeRates(metrics) {
  const rates = new Map();
  for (const stage of metrics.stages ?? []) if (stage.id === stage.node) rates.set(stage.id, stage.rate);
  for (const pipeline of metrics.pipelines ?? []) rates.set(pipeline.node, pipeline.rate);
  return rates;
}

function updateGraph(metrics) {
  const rates = nodeRates(metrics);
  const held = backpressureByNode(metrics.workers ?? []);
  for (const [id, parts] of drawn.nodes) {
    setText(parts.rate, rates.has(id) ? `${formatRate(rates.get(id)).replace("/s", "")} msgs/s` : "–");
    const holders = held.get(id) ?? [];
    parts.box.classList.toggle("backpressure", holders.length > 0);
    const worst = Math.max(0, ...holders.map((holder) => holder.share));
    setText(parts.badge, holders.length ? `back-pressure ${formatPercent(worst)}` : "");
    const detail = holders.map((h) => `\n${h.worker} held back ${formatPercent(h.share)} of the last interval`);
    const node = parts.node;
    setText(parts.title, `${node.name} (${node.kind}, pipeline ${node.pipeline})${detail.join("")}`);
  }
}

function renderGraph(graph, metrics) {
  if (drawn.graph !== graph) drawGraph(graph);
  updateGraph(metrics);
}

// ---------------------------------------------------------------------------------------------
// charts

/** Throughput over the last five minutes: an area under a line, the maximum marked and
 * labelled, and the time axis's ends labelled below. */
function sparkline(times, values, width = 150, height = 36) {
  const labelRoom = 12;
  const svg = svgEl("svg", { class: "spark", width, height: height + labelRoom, role: "img" });
  svg.append(svgEl("text", { class: "axis", x: 0, y: height + labelRoom - 1 }, "−5 min"),
             svgEl("text", { class: "axis", x: width, y: height + labelRoom - 1, "text-anchor": "end" }, "now"));
  if (!times?.length || !values?.length) {
    svg.append(svgEl("text", { class: "axis", x: width / 2, y: height / 2 + 4, "text-anchor": "middle" }, "no data yet"));
    return svg;
  }
  const end = times[times.length - 1];
  const max = Math.max(0, ...values.map((v) => Number(v) || 0));
  const plotTop = 11;   // room for the max label above the plot
  const x = (t) => Math.max(0, width - ((end - t) / HISTORY_SPAN_S) * width);
  const y = (v) => (max > 0 ? plotTop + (1 - (Number(v) || 0) / max) * (height - plotTop - 1) : height - 1);
  const points = times.map((t, i) => `${x(t).toFixed(1)},${y(values[i]).toFixed(1)}`);
  const first = x(times[0]).toFixed(1);
  svg.dataset.max = String(max);
  svg.append(
    svgEl("line", { class: "max-line", x1: 0, x2: width, y1: plotTop, y2: plotTop }),
    svgEl("line", { class: "base-line", x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5 }),
    svgEl("path", { class: "area", d: `M${first},${height} L${points.join(" L")} L${width},${height} Z` }),
    svgEl("polyline", { class: "line", points: points.join(" ") }),
    svgEl("text", { class: "axis max", x: 0, y: 8 }, `max ${formatRateShort(max)}`),
    svgEl("title", {}, `throughput, last 5 min: now ${formatRate(values[values.length - 1])}, max ${formatRate(max)}`));
  return svg;
}

/** The share of messages per latency bin, a bar per power-of-two bin. ``labelAll`` labels
 * every bar with its upper edge (and its share above it); otherwise the first and last bars
 * are labelled. Bars wholly above ``p99`` are drawn as the tail. */
function binsChart(bins, p99, { width = 150, height = 36, labelAll = false } = {}) {
  const labelRoom = labelAll ? 16 : 12;
  const svg = svgEl("svg", { class: `bins${labelAll ? " large" : ""}`, width, height: height + labelRoom, role: "img" });
  if (!bins?.length) {
    svg.append(svgEl("text", { class: "axis", x: width / 2, y: height / 2 + 4, "text-anchor": "middle" }, "no samples yet"));
    return svg;
  }
  const top = labelAll ? 14 : 2;   // room for the share labels
  const slot = width / bins.length;
  const maxShare = Math.max(...bins.map((bin) => bin.share), 1e-9);
  bins.forEach((bin, i) => {
    const barHeight = Math.max(bin.share > 0 ? 1 : 0, (bin.share / maxShare) * (height - top));
    const x = i * slot + Math.min(1, slot * 0.1);
    const tail = p99 > 0 && bin.le_ns / 2 >= p99;
    svg.append(svgEl("rect", { class: tail ? "bar tail" : "bar", x: x.toFixed(1), y: (height - barHeight).toFixed(1),
                               width: Math.max(1, slot - 2 * Math.min(1, slot * 0.1)).toFixed(1),
                               height: barHeight.toFixed(1) },
      svgEl("title", {}, `≤ ${formatDuration(bin.le_ns)}: ${formatPercent(bin.share)} of messages`)));
    if (labelAll) {
      const cx = (i + 0.5) * slot;
      svg.append(svgEl("text", { class: "axis", x: cx, y: height + 12, "text-anchor": "middle" }, formatDurationShort(bin.le_ns)));
      if (bin.share >= 0.005) {
        svg.append(svgEl("text", { class: "axis share", x: cx, y: height - barHeight - 3, "text-anchor": "middle" },
          formatPercent(bin.share)));
      }
    }
  });
  if (!labelAll) {
    const last = bins[bins.length - 1];
    svg.append(svgEl("text", { class: "axis", x: 0, y: height + labelRoom - 1 }, `≤${formatDurationShort(bins[0].le_ns)}`));
    if (bins.length > 1) {
      svg.append(svgEl("text", { class: "axis", x: width, y: height + labelRoom - 1, "text-anchor": "end" },
        `≤${formatDurationShort(last.le_ns)}`));
    }
  }
  return svg;
}

/** The history series of one pipeline / stage / worker: [times, values]. */
function historyOf(group, key) {
  const history = state.history;
  return [history?.time ?? [], history?.[group]?.[key] ?? []];
}

// ---------------------------------------------------------------------------------------------
// tables

/** The rows of a <tbody>, kept by key from one render to the next: ``build(item)`` makes an
 * entry ({rows: [tr, ...], ...}) the first time a key is seen, ``update(entry, item)`` refreshes
 * it on every render, and the rows of keys that went away are removed. */
class KeyedRows {
  constructor(tbodyId, keyOf, build, update, emptyText) {
    this.tbodyId = tbodyId;
    this.keyOf = keyOf;
    this.build = build;
    this.update = update;
    this.entries = new Map();
    this.empty = el("tr", { class: "empty" }, el("td", { colspan: 20 }, emptyText));
  }

  render(items) {
    const tbody = byId(this.tbodyId);
    const seen = new Set();
    let previous = null;
    for (const item of items) {
      const key = this.keyOf(item);
      seen.add(key);
      if (!this.entries.has(key)) this.entries.set(key, this.build(item));
      const entry = this.entries.get(key);
      this.update(entry, item);
      for (const row of entry.rows) {   // put the rows in the items' order, moving only those out of place
        const wanted = previous ? previous.nextSibling : tbody.firstChild;
        if (wanted !== row) tbody.insertBefore(row, wanted);
        previous = row;
      }
    }
    for (const [key, entry] of this.entries) {
      if (seen.has(key)) continue;
      entry.rows.forEach((row) => row.remove());
      this.entries.delete(key);
    }
    if (items.length === 0 && !this.empty.isConnected) tbody.append(this.empty);
    if (items.length > 0) this.empty.remove();
  }
}

/** Latency cells: p50 … p99.99. */
function latencyCells() {
  return PERCENTILES.map(() => el("td", { class: "num latency" }));
}

function updateLatencyCells(cells, latency) {
  const timed = (latency?.count ?? 1) > 0;
  PERCENTILES.forEach((key, i) => setText(cells[i], timed ? formatDuration(latency?.[key]) : "–"));
}

/** A row toggle (▸ / ▾) that shows and hides a detail row; ``onOpen`` fills it when opened. */
function expander(detailRow, onOpen) {
  const button = el("button", { class: "expand", type: "button", "aria-expanded": "false",
                                title: "per-worker breakdown" }, "▸");
  button.addEventListener("click", () => {
    const open = detailRow.hidden;
    detailRow.hidden = !open;
    button.setAttribute("aria-expanded", String(open));
    setText(button, open ? "▾" : "▸");
    if (open) onOpen();
  });
  return button;
}

/** A pipeline's or stage's row and its hidden per-worker detail row. */
function buildFiguresEntry(item) {
  const entry = { item, sparkVersion: -1 };
  entry.name = el("span", { class: "name" });
  entry.sub = el("span", { class: "sub" });
  entry.rate = el("td", { class: "num rate", "data-rate-for": item.id, "data-rate-value": "0" });
  entry.messages = el("td", { class: "num" });
  entry.latency = latencyCells();
  entry.spark = el("td", { class: "chart" });
  entry.bins = el("td", { class: "chart" });
  entry.workersBody = el("tbody");
  entry.detailBins = el("div", { class: "detail-chart" });
  const detail = el("tr", { class: "detail", hidden: true }, el("td", { colspan: 10 },
    el("div", { class: "detail-grid" },
      el("div", {},
        el("h3", {}, "Per worker"),
        el("table", { class: "breakdown" },
          el("thead", {}, el("tr", {}, el("th", {}, "Worker"), el("th", { class: "num" }, "Throughput"),
            el("th", { class: "num" }, "Messages"), ...PERCENTILES.map((p) => el("th", { class: "num" }, p)))),
          entry.workersBody)),
      el("div", {}, el("h3", {}, "Latency distribution (share of messages per bin, by upper edge)"), entry.detailBins))));
  const nameCell = el("td", { class: "name-cell" }, el("div", { class: "name-wrap" },
    expander(detail, () => updateFiguresDetail(entry)), el("div", { class: "name-block" }, entry.name, entry.sub)));
  const row = el("tr", { class: "row", id: `row-${item.id}` },
    nameCell, entry.rate, entry.messages, ...entry.latency, entry.spark, entry.bins);
  entry.detail = detail;
  entry.rows = [row, detail];
  return entry;
}

/** Refresh a pipeline's or stage's row; ``group`` names its series in /api/history. */
function updateFiguresEntry(entry, item, group, subText) {
  entry.item = item;
  setText(entry.name, item.name);
  setText(entry.sub, subText);
  setText(entry.rate, formatRate(item.rate));
  entry.rate.setAttribute("data-rate-value", String(Number(item.rate) || 0));
  setText(entry.messages, formatCount(item.messages));
  updateLatencyCells(entry.latency, item.latency_ns);
  entry.bins.replaceChildren(binsChart(item.bins, item.latency_ns?.p99));
  if (entry.sparkVersion !== state.historyVersion) {
    entry.spark.replaceChildren(sparkline(...historyOf(group, item.id)));
    entry.sparkVersion = state.historyVersion;
  }
  if (!entry.detail.hidden) updateFiguresDetail(entry);
}

/** The per-worker table and the labelled latency chart of an expanded row. */
function updateFiguresDetail(entry) {
  const item = entry.item;
  const workers = Object.entries(item.workers ?? {}).sort(([a], [b]) => a.localeCompare(b));
  entry.workersBody.replaceChildren(...workers.map(([name, figures]) => {
    const cells = latencyCells();
    updateLatencyCells(cells, figures.latency_ns);
    return el("tr", {}, el("td", {}, name), el("td", { class: "num" }, formatRate(figures.rate)),
      el("td", { class: "num" }, formatCount(figures.messages)), ...cells);
  }));
  if (!workers.length) entry.workersBody.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no worker has reported it yet")));
  const bins = item.bins ?? [];
  entry.detailBins.replaceChildren(binsChart(bins, item.latency_ns?.p99,
    { width: Math.max(240, bins.length * 46), height: 90, labelAll: true }));
}

function stageSubText(stage) {
  return `${stage.kind.replace("_", " ")} · ${stage.pipeline}`;
}

const pipelineRows = new KeyedRows("pipelines-body", (pipeline) => pipeline.id, buildFiguresEntry,
  (entry, pipeline) => updateFiguresEntry(entry, pipeline, "pipelines", `→ ${pipeline.sink}`),
  "No pipeline reported yet.");

const stageRows = new KeyedRows("stages-body", (stage) => stage.id,
  (stage) => {
    const entry = buildFiguresEntry(stage);
    entry.rows[0].classList.toggle("sub-stage", SUB_STAGE_KINDS.has(stage.kind));
    entry.rows[0].dataset.kind = stage.kind;
    return entry;
  },
  (entry, stage) => updateFiguresEntry(entry, stage, "stages", stageSubText(stage)),
  "No stage reported yet.");

// -- workers

function buildWorkerEntry(worker) {
  const entry = { sparkVersion: -1 };
  entry.pid = el("span", { class: "sub" });
  entry.rateIn = el("div", { "data-worker-rate": worker.name });
  entry.rateOut = el("div", { class: "sub" });
  entry.messagesIn = el("div");
  entry.messagesOut = el("div", { class: "sub" });
  entry.latency = latencyCells();
  entry.cpu = el("div");
  entry.cpuBar = el("span");
  entry.rss = el("div", { class: "sub" });
  entry.backpressure = el("td", { class: "backpressure-cell" });
  entry.spark = el("td", { class: "chart" });
  entry.bins = el("td", { class: "chart" });
  const row = el("tr", { class: "row", id: `worker-${worker.name}`, "data-worker": worker.name },
    el("td", { class: "name-cell" }, el("div", { class: "name-block" }, el("span", { class: "name" }, worker.name), entry.pid)),
    el("td", { class: "num" }, entry.rateIn, entry.rateOut),
    el("td", { class: "num" }, entry.messagesIn, entry.messagesOut),
    ...entry.latency,
    el("td", { class: "num" }, entry.cpu, el("div", { class: "meter" }, entry.cpuBar), entry.rss),
    entry.backpressure, entry.spark, entry.bins);
  entry.rows = [row];
  return entry;
}

/** One back-pressure entry: a sink (linked to its pipeline row), another worker (linked to its
 * row) or a checkpoint barrier, with its share of the interval. */
function backpressureChip(entry) {
  let label;
  if (entry.by.startsWith("worker:")) {
    const name = entry.by.slice("worker:".length);
    label = el("a", { href: `#worker-${name}`, title: `its link to ${name} was full` }, `link to ${name}`);
  } else if (entry.by === "checkpoint") {
    label = el("span", { title: "a checkpoint barrier" }, "checkpoint");
  } else {
    label = el("a", { href: `#row-${entry.by}`, title: entry.name }, entry.name || entry.by);
  }
  return el("div", { class: "chip", "data-by": entry.by }, label, el("span", { class: "share" }, formatPercent(entry.share)));
}

function updateWorkerEntry(entry, worker) {
  setText(entry.pid, `pid ${worker.pid}`);
  setText(entry.rateIn, `${formatRate(worker.rate_in)} in`);
  setText(entry.rateOut, `${formatRate(worker.rate_out)} out`);
  setText(entry.messagesIn, `${formatCount(worker.messages_in)} in`);
  setText(entry.messagesOut, `${formatCount(worker.messages_out)} out`);
  updateLatencyCells(entry.latency, worker.latency_ns);
  const cpu = Number(worker.cpu_percent) || 0;
  setText(entry.cpu, `${Math.round(cpu)}%`);
  entry.cpuBar.style.width = `${Math.min(100, cpu)}%`;
  setText(entry.rss, formatMiB(worker.rss_bytes));
  const held = (worker.backpressure ?? []).filter((bp) => bp.share > 0).sort((a, b) => b.share - a.share);
  entry.backpressure.replaceChildren(...(held.length ? held.map(backpressureChip) : [el("span", { class: "muted" }, "none")]));
  entry.bins.replaceChildren(binsChart(worker.bins, worker.latency_ns?.p99));
  if (entry.sparkVersion !== state.historyVersion) {
    entry.spark.replaceChildren(sparkline(...historyOf("workers", worker.name)));
    entry.sparkVersion = state.historyVersion;
  }
}

const workerRows = new KeyedRows("workers-body", (worker) => worker.name, buildWorkerEntry, updateWorkerEntry,
  "No worker has reported yet.");

// ---------------------------------------------------------------------------------------------
// checkpoints

function renderCheckpoints(checkpoints) {
  byId("checkpoints-wait").hidden = true;
  byId("checkpoints-off").hidden = Boolean(checkpoints);
  byId("checkpoints-on").hidden = !checkpoints;
  byId("checkpoints").dataset.resilience = checkpoints ? "on" : "off";
  if (!checkpoints) return;
  setText(byId("cp-last-id"), checkpoints.last_id == null ? "none yet" : `#${checkpoints.last_id}`);
  setText(byId("cp-duration"), formatDuration((Number(checkpoints.last_duration_s) || 0) * 1e9));
  setText(byId("cp-size"), formatBytes(checkpoints.last_bytes));
  setText(byId("cp-completed"), formatCount(checkpoints.completed));
  setText(byId("cp-restarts"), formatCount(checkpoints.restarts));
}

// ---------------------------------------------------------------------------------------------

every(() => METRICS_PERIOD_MS, pollMetrics);
every(() => ((state.history?.time?.length ?? 0) < HISTORY_WARMUP_POINTS ? HISTORY_WARMUP_PERIOD_MS : HISTORY_PERIOD_MS),
      pollHistory);
