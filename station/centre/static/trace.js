// The centre's tracing page. Every value from the server (and every echo of what was typed) reaches the
// DOM through textContent, never as markup; the page has no inline script (CSP script-src 'self').
"use strict";

const COLUMNS = [
  ["ts", "时间 · time"], ["site", "site"], ["station", "station"], ["kind", "kind"], ["event_id", "event"],
  ["decision", "decision"], ["reason", "reason"], ["temperature_c", "°C"], ["code_colour", "code"],
  ["detail", "detail"], ["trace_ref", "trace ref"], ["trace_key", "key id"],
];
const state = { timezone: "UTC" };
const HISTORY = [["at", "时间 · when"], ["username", "user"], ["query", "query"], ["params", "what"], ["reason", "理由 · why"], ["ok", "ok"], ["rows", "rows"], ["error", "refused because"]];

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (r.status === 401) { location.href = "/login"; throw new Error("login required"); }
  return r;
}

async function getJson(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  if (r.status === 401) { location.href = "/login"; throw new Error("login required"); }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
  return data;
}

function localTime(iso) {
  // The centre's zone, to the second (the fever form's times are read in that zone too; the CSV keeps UTC).
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString("sv-SE", { timeZone: state.timezone, hour12: false });
}

function status(text, isError) {
  const s = document.getElementById("result-status");
  s.textContent = text;
  s.className = "status" + (isError ? " error" : "");
}

function fillTable(table, columns, rows, onRow) {
  const head = table.querySelector("thead");
  const body = table.querySelector("tbody");
  head.replaceChildren();
  body.replaceChildren();
  const tr = el("tr");
  for (const [key, label] of columns) tr.append(el("th", null, key === "ts" || key === "at" ? label + " (" + state.timezone + ")" : label));
  if (onRow) tr.append(el("th"));
  head.append(tr);
  for (const row of rows) {
    const r = el("tr");
    for (const [key] of columns) {
      let v = row[key];
      if (v !== null && typeof v === "object") v = JSON.stringify(v);
      else if ((key === "ts" || key === "at") && typeof v === "string") v = localTime(v);
      r.append(el("td", "c-" + key, v === null || v === undefined ? "" : v));
    }
    if (onRow) r.append(onRow(row));
    body.append(r);
  }
}

function seenBody(format) {
  return {
    domain: document.getElementById("seen-domain").value,
    value: document.getElementById("seen-value").value,
    days: document.getElementById("seen-days").value,
    reason: document.getElementById("seen-reason").value,
    format: format,
  };
}

function feverBody(format) {
  return {
    station: document.getElementById("fever-station").value.trim(),
    node: document.getElementById("fever-node").value.trim(),
    from: document.getElementById("fever-from").value,
    to: document.getElementById("fever-to").value,
    fever_c: document.getElementById("fever-c").value,
    reason: document.getElementById("fever-reason").value,
    format: format,
  };
}

function traceRefButton(row) {
  const td = el("td");
  if (!row.trace_ref) return td;
  const b = el("button", "small retrace", "追溯 · trace");
  b.type = "button";
  b.addEventListener("click", () => {
    document.getElementById("seen-domain").value = "ref";
    document.getElementById("seen-value").value = row.trace_ref;
    document.getElementById("seen-value").focus();
    status("引用已填入；请填写理由后查询 · Reference filled in: give a reason and trace", false);
  });
  td.append(b);
  return td;
}

async function run(path, body) {
  status("查询中 · Querying…", false);
  try {
    const r = await post(path, body);
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      status((data.error || ("HTTP " + r.status)) + (data.audited ? " (已记录 · audited)" : ""), true);
      document.body.dataset.error = data.field || "other";
      return;
    }
    delete document.body.dataset.error;
    fillTable(document.getElementById("results"), COLUMNS, data.rows, traceRefButton);
    const shown = data.truncated ? " (显示前 " + data.rows.length + " · first " + data.rows.length + " shown; CSV has all)" : "";
    status(data.count + " 条记录 · rows" + shown + " — 已记录 · audited", false);
    document.body.dataset.rows = String(data.count);
  } catch (err) {
    status(String(err.message || err), true);
  }
  await history();
}

async function download(path, body) {
  status("导出中 · Exporting…", false);
  try {
    const r = await post(path, body);
    if (!r.ok) {
      const data = await r.json().catch(() => ({}));
      status((data.error || ("HTTP " + r.status)) + (data.audited ? " (已记录 · audited)" : ""), true);
      return;
    }
    const blob = await r.blob();
    const match = /filename="([^"]+)"/.exec(r.headers.get("Content-Disposition") || "");
    const a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = match ? match[1] : "trace.csv";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    status("已导出 · Exported — 已记录 · audited as an export", false);
  } catch (err) {
    status(String(err.message || err), true);
  }
  await history();
}

async function history() {
  try {
    const data = await getJson("/api/trace/history");
    fillTable(document.getElementById("history"), HISTORY, data.audit, null);
  } catch (err) {
    status(String(err.message || err), true);
  }
}

async function start() {
  const me = await getJson("/api/whoami");
  document.getElementById("who").textContent = me.user + " (" + me.role + ")";
  const info = await getJson("/api/trace/info");
  state.timezone = info.timezone;
  const list = document.getElementById("stations");
  for (const station of info.stations) {
    const o = el("option");
    o.value = station;
    list.append(o);
  }
  const nodes = document.getElementById("fever-node");
  for (const node of info.nodes) {
    const o = el("option", null, node.name + " (" + node.path + ")");
    o.value = node.path;
    nodes.append(o);
  }
  document.getElementById("keys").textContent = info.keys.length
    ? "区县密钥 · district key " + info.keys.join(", ")
    : "未加载区县密钥：只能按引用查询 · no district key loaded: trace by reference only";
  for (const option of document.querySelectorAll("#seen-domain option")) {
    if (!info.domains.includes(option.value)) option.disabled = true;
  }
  if (!info.keys.length) document.getElementById("seen-domain").value = "ref";
  document.getElementById("seen-form").addEventListener("submit", (e) => { e.preventDefault(); run("/api/trace/seen", seenBody("json")); });
  document.getElementById("seen-csv").addEventListener("click", () => download("/api/trace/seen", seenBody("csv")));
  document.getElementById("fever-form").addEventListener("submit", (e) => { e.preventDefault(); run("/api/trace/fever", feverBody("json")); });
  document.getElementById("fever-csv").addEventListener("click", () => download("/api/trace/fever", feverBody("csv")));
  await history();
  document.body.dataset.loaded = "1";
}

start();
