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

const SAMPLES = 90;
const usage = { cpu: [], mem: [], last: null };

function renderUsage(row) {
  const svg = document.getElementById("usage");
  if (!svg || !row.usage || row.usage.cpuSeconds == null) return;
  const now = row.usage;
  if (usage.last && now.at > usage.last.at) {
    const share = (now.cpuSeconds - usage.last.cpuSeconds) / (now.at - usage.last.at);
    const vcpus = Number(svg.dataset.vcpus) || 1;
    usage.cpu.push(Math.max(0, Math.min(1, share / vcpus)));
    document.getElementById("cpu-now").textContent = `${(share * 100).toFixed(1)} %`;
  }
  usage.last = now;
  if (now.memoryBytes != null) {
    const limit = (Number(svg.dataset.memLimit) || 1) * 1048576;
    usage.mem.push(Math.min(1, now.memoryBytes / limit));
    document.getElementById("mem-now").textContent =
      `${(now.memoryBytes / 1048576).toFixed(1)} MiB`;
  }
  for (const [name, values] of Object.entries({ cpu: usage.cpu, mem: usage.mem })) {
    values.splice(0, Math.max(0, values.length - SAMPLES));
    const step = 300 / (SAMPLES - 1);
    const points = values.map((v, i) => `${(i * step).toFixed(1)},${(58 - v * 56).toFixed(1)}`);
    svg.querySelector("polyline." + name).setAttribute("points", points.join(" "));
  }
}

function renderSummary(section, row) {
  renderUsage(row);
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

// Processes: the list, and the selected one's output (chunks by seq; the last may grow,
// so it is asked for again each time).
const output = { id: "", from: 0, chunks: new Map() };

function select(id) {
  output.id = id;
  output.from = 0;
  output.chunks.clear();
  document.getElementById("process-output").textContent = "";
  for (const tr of document.querySelectorAll("#process-list tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.id === id);
  }
}

function renderProcesses(section, data) {
  const body = section.querySelector("#process-list tbody");
  const rows = data.processes.map((p) => {
    const tr = document.createElement("tr");
    tr.dataset.id = p.id;
    if (p.id === output.id) tr.className = "selected";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.textContent = p.id;
    button.addEventListener("click", () => select(p.id));
    const first = document.createElement("td");
    first.appendChild(button);
    const status = p.status + (p.exitCode == null ? "" : ` (${p.exitCode})`);
    tr.append(first, cell(p.command), cell(status, "status " + p.status));
    return tr;
  });
  body.replaceChildren(...rows);
  if (!output.id && data.processes.length) select(data.processes[0].id);
}

async function pollOutput(section) {
  if (output.id) {
    const id = output.id;
    try {
      const answer = await fetch(`${section.dataset.live}/${encodeURIComponent(id)}?from=${output.from}`,
                                 { credentials: "same-origin" });
      if (answer.ok && id === output.id) {
        const data = await answer.json();
        for (const chunk of data.chunks) {
          output.chunks.set(chunk.seq, chunk.text);
          output.from = Math.max(output.from, chunk.seq);
        }
        const pre = document.getElementById("process-output");
        pre.textContent = [...output.chunks.keys()].sort((a, b) => a - b)
          .map((seq) => output.chunks.get(seq)).join("");
        pre.scrollTop = pre.scrollHeight;
      }
    } catch (_) { /* next tick */ }
  }
  setTimeout(() => pollOutput(section), 1000);
}

// Upload: the picked file's bytes go to the console in one PUT, with the CSRF token.
function wireUpload(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = form.elements.file.files[0];
    const state = document.getElementById("upload-state");
    if (!file) return;
    const folder = form.dataset.folder.replace(/\/$/, "");
    const target = `${form.dataset.target}?path=${encodeURIComponent(folder + "/" + file.name)}`;
    state.textContent = "uploading…";
    const answer = await fetch(target, {
      method: "PUT", body: file, credentials: "same-origin",
      headers: { "x-csrf-token": form.dataset.csrf },
    });
    if (answer.ok) {
      window.location.reload();
    } else {
      const problem = await answer.json().catch(() => ({ message: answer.statusText }));
      state.textContent = "not uploaded: " + problem.message;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const processes = document.querySelector("#processes[data-live]");
  if (processes) {
    if (processes.dataset.selected) output.id = processes.dataset.selected;
    poll(processes, renderProcesses);
    pollOutput(processes);
  }
  const uploader = document.getElementById("upload");
  if (uploader) wireUpload(uploader);
  const table = document.querySelector("table#sandboxes[data-live]");
  if (table) setTimeout(() => poll(table, renderRows), POLL_MS);
  const summary = document.querySelector("#summary[data-live]");
  if (summary) poll(summary, renderSummary);
  const filter = document.getElementById("status-filter");
  if (filter) filter.addEventListener("change", () => filter.form.submit());
});
