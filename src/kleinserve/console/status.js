// The status page: GET /v1/stats every few seconds, shown per served model as a table (last hour, last day)
// and a plain SVG chart of p50/p95 latency per window. Nothing is loaded from anywhere but this server.

import { ApiFailure, getJson, saveKey, savedKey } from "./api.js";

const REFRESH_MS = 5000;
const WINDOW_LABELS = { "1h": "Last hour", "24h": "Last day" };
const WINDOW_SPANS = { "1h": "-1 h", "24h": "-24 h" };
const COLUMNS = [
  "Window", "Requests", "Success rate", "Failed", "Rejected", "Latency p50", "Latency p95",
  "First byte p50", "First byte p95", "Images/s", "Queue depth",
];
const SVG = "http://www.w3.org/2000/svg";
const CHART = { width: 360, height: 140, left: 46, right: 10, top: 12, bottom: 20 };

const $ = (id) => document.getElementById(id);

let keyRequired = false;

async function main() {
  const config = await getJson("/console/config.json");
  keyRequired = config.api_key_required;
  $("key-fields").hidden = !keyRequired;
  $("api-key").value = savedKey();
  $("api-key").addEventListener("change", () => {
    saveKey($("api-key").value.trim());
    refresh();
  });
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

async function refresh() {
  const key = $("api-key").value.trim();
  if (keyRequired && !key) {
    showError("Enter this server's API key to see its stats.");
    return;
  }
  try {
    const [stats, health] = await Promise.all([getJson("/v1/stats", key), getJson("/health")]);
    render(stats, health.models || {});
    showError(null);
    $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s.`;
  } catch (error) {
    const reason = error instanceof ApiFailure ? error.message : `the server cannot be reached (${error})`;
    showError(`Could not read /v1/stats: ${reason}`);
  }
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function render(stats, states) {
  const windows = Object.keys(WINDOW_LABELS).filter((name) => stats.windows && stats.windows[name]);
  const models = windows.length ? Object.keys(stats.windows[windows[0]].models) : [];
  const sections = models.map((model, index) =>
    modelSection(model, `model-${index}`, states[model], windows.map((name) => [name, stats.windows[name]])),
  );
  if (!sections.length) sections.push(element("p", { class: "hint" }, "No models are served."));
  $("models").replaceChildren(...sections);
}

function modelSection(model, id, state, windows) {
  const heading = element("h2", { id: `${id}-title` }, model);
  if (state) heading.append(element("span", { class: "model-state" }, state.state));
  const section = element("section", { class: "panel", "aria-labelledby": `${id}-title` }, heading);
  section.append(statsTable(model, windows));
  const charts = element("div", { class: "charts" });
  for (const [name, window] of windows) charts.append(chartFigure(model, name, window.models[model]));
  section.append(charts);
  return section;
}

function statsTable(model, windows) {
  const table = element("table", { class: "stats-table" });
  table.append(element("caption", { class: "hint" }, `${model}: requests, success and latency`));
  const head = element("tr");
  for (const column of COLUMNS) head.append(element("th", { scope: "col" }, column));
  table.append(element("thead", {}, head));
  const body = element("tbody");
  for (const [name, window] of windows) {
    const s = window.models[model];
    const row = element("tr", {}, element("th", { scope: "row" }, WINDOW_LABELS[name]));
    const cells = [
      s.requests, percent(s.success_rate), s.failed, s.rejected,
      ms(s.generation_ms.p50), ms(s.generation_ms.p95),
      ms(s.time_to_first_byte_ms.p50), ms(s.time_to_first_byte_ms.p95),
      rate(s.images_per_second), s.queue_depth,
    ];
    for (const cell of cells) row.append(element("td", {}, String(cell)));
    body.append(row);
  }
  table.append(body);
  return table;
}

function chartFigure(model, name, summary) {
  const label = `Latency of ${model}, ${WINDOW_LABELS[name].toLowerCase()}, in ${summary.series.length} intervals`;
  const caption = element("figcaption", {}, `${WINDOW_LABELS[name]}: latency `);
  caption.append(element("span", { class: "legend-p50" }, "p50"), " and ", element("span", { class: "legend-p95" }, "p95"));
  return element("figure", {}, caption, latencyChart(summary.series, label, WINDOW_SPANS[name]));
}

// p50 and p95 lines over the window's intervals; an interval without successful requests breaks the line.
function latencyChart(series, label, span) {
  const { width, height, left, right, top, bottom } = CHART;
  const svg = svgElement("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  svg.append(svgElement("title", {}, label));
  const values = series.flatMap((point) => [point.p50_ms, point.p95_ms]).filter((v) => v !== null);
  const ceiling = values.length ? niceCeiling(Math.max(...values, 1)) : 1000;
  const plotWidth = width - left - right;
  const x = (i) => left + ((i + 0.5) * plotWidth) / series.length;
  const y = (value) => top + (height - top - bottom) * (1 - value / ceiling);
  svg.append(
    svgElement("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }),
    svgElement("line", { class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }),
    svgElement("text", { x: left - 4, y: top + 4, "text-anchor": "end" }, axisLabel(ceiling)),
    svgElement("text", { x: left - 4, y: height - bottom, "text-anchor": "end" }, "0"),
    svgElement("text", { x: left, y: height - 6 }, span),
    svgElement("text", { x: width - right, y: height - 6, "text-anchor": "end" }, "now"),
  );
  if (!values.length) {
    const middle = { x: left + plotWidth / 2, y: height / 2, "text-anchor": "middle" };
    svg.append(svgElement("text", middle, "no successful requests"));
    return svg;
  }
  for (const key of ["p95_ms", "p50_ms"]) {
    const kind = key.slice(0, 3);
    let run = [];
    const flush = () => {
      if (run.length > 1) svg.append(svgElement("polyline", { class: kind, fill: "none", "stroke-width": 2, points: run.join(" ") }));
      run = [];
    };
    series.forEach((point, i) => {
      if (point[key] === null) return flush();
      run.push(`${x(i).toFixed(1)},${y(point[key]).toFixed(1)}`);
      svg.append(svgElement("circle", { class: `dot-${kind}`, cx: x(i).toFixed(1), cy: y(point[key]).toFixed(1), r: 2.5 }));
    });
    flush();
  }
  return svg;
}

function niceCeiling(value) {
  const magnitude = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * magnitude).find((v) => v >= value);
}

function axisLabel(ms) {
  return ms < 1000 ? `${ms} ms` : `${ms / 1000} s`; // a nice ceiling: 1, 2 or 5 times a power of ten
}

function ms(value) {
  if (value === null || value === undefined) return "—";
  return value < 1000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(2)} s`;
}

function percent(value) {
  return value === null ? "—" : `${Number((value * 100).toFixed(1))}%`;
}

function rate(value) {
  return value === 0 ? "0" : Number(value.toPrecision(3)).toString();
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function svgElement(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

main().catch((error) => showError(`The status page could not start: ${error.message}`));
