// The console's live parts: the sandboxes list and a sandbox's summary poll their JSON
// and update in place. Text goes in with textContent: nothing from the server is parsed
// as HTML.
"use strict";

const POLL_MS = 2000;

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function statusText(row) {
  return row.status + (row.suspended ? " (on disk)" : "");
}

function renderRows(table, data) {
  const body = table.tBodies[0];
  const rows = data.rows.map((row) => {
    const tr = document.createElement("tr");
    tr.dataset.id = row.id;
    const link = document.createElement("a");
    link.href = row.url;
    link.textContent = row.id;
    const first = document.createElement("td");
    first.appendChild(link);
    tr.append(first, cell(statusText(row), "status " + row.status), cell(row.image),
              cell(row.age), cell(row.timeLeft), cell(`${row.vcpus} vCPU · ${row.memMiB} MiB`));
    return tr;
  });
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell("No sandboxes.");
    td.colSpan = 6;
    tr.appendChild(td);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function renderSummary(section, row) {
  for (const node of section.querySelectorAll("[data-field]")) {
    const field = node.dataset.field;
    node.textContent = field === "status" ? statusText(row) : (row[field] || "—");
    if (field === "status") node.className = "status " + row.status;
  }
}

async function poll(node, render) {
  try {
    const answer = await fetch(node.dataset.live, { credentials: "same-origin" });
    if (answer.status === 401) { window.location.assign("/console/login"); return; }
    if (answer.ok) render(node, await answer.json());
  } catch (_) { /* the server restarts: try again at the next tick */ }
  setTimeout(() => poll(node, render), POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.querySelector("table#sandboxes[data-live]");
  if (table) setTimeout(() => poll(table, renderRows), POLL_MS);
  const summary = document.querySelector("#summary[data-live]");
  if (summary) setTimeout(() => poll(summary, renderSummary), POLL_MS);
  const filter = document.getElementById("status-filter");
  if (filter) filter.addEventListener("change", () => filter.form.submit());
});
