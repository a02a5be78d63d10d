// The usage panel: GET /v1/usage (`data` rows and `totals`) as a table, read when the panel is opened.
// Without a key (on a server that needs one) or with a key that may not read usage, it says so.

import { ApiFailure, getJson } from "./api.js";

export function wireUsage({ panel, status, table, keyRequired, currentKey }) {
  const load = async () => {
    const key = currentKey();
    if (keyRequired && !key) {
      table.hidden = true;
      status.textContent = "Enter your API key above to see usage.";
      return;
    }
    status.textContent = "Loading…";
    try {
      const body = await getJson("/v1/usage", key);
      renderTable(table, body.data || [], body.totals || null);
      status.textContent = (body.data || []).length ? "" : "No usage recorded yet.";
    } catch (error) {
      table.hidden = true;
      status.textContent = explain(error);
    }
  };
  panel.addEventListener("toggle", () => panel.open && load());
  return load;
}

function explain(error) {
  if (!(error instanceof ApiFailure)) return `Usage could not be read: ${error.message}`;
  if (error.status === 401) return "Usage needs a valid API key: enter one above.";
  if (error.status === 403) return `This key may not read usage: ${error.message}`;
  if (error.status === 404) return "This server does not report usage.";
  return `Usage could not be read: ${error.message}`;
}

function renderTable(table, rows, totals) {
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
  if (!columns.length && totals) columns.push(...Object.keys(totals));
  const [head, body, foot] = [table.tHead, table.tBodies[0], table.tFoot];
  head.replaceChildren(rowOf(columns.map(label), "th"));
  body.replaceChildren(...rows.map((row) => rowOf(columns.map((c) => format(row[c])))));
  foot.replaceChildren();
  if (totals) {
    const cells = columns.map((c, i) => (c in totals ? format(totals[c]) : i === 0 ? "Total" : ""));
    foot.append(rowOf(cells, "th"));
  }
  table.hidden = !columns.length;
}

function rowOf(cells, tag = "td") {
  const row = document.createElement("tr");
  for (const text of cells) {
    const cell = document.createElement(tag);
    cell.textContent = text;
    row.append(cell);
  }
  return row;
}

const label = (name) => name.replace(/_/g, " ");

function format(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(value < 1 ? 4 : 2);
  return String(value);
}
