// The district centre's big screen. Every value from the server reaches the DOM through textContent
// (never as markup): a node or station name carrying tags shows as text.
"use strict";

const REFRESH_MS = 5000;
const RANK = { viewer: 0, tracer: 1, admin: 2 };
const DECISIONS = [
  ["screened", "筛查 · screened"], ["pass", "通过 · pass"], ["fevers", "发热 · fevers"],
  ["deny_code", "码异常 · code denied"], ["manual_check", "人工 · manual"], ["retry", "重试 · retry"],
];
const state = { node: "", role: "viewer", user: "", version: 0, charts: { sparks: {} } };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const r = await fetch(path, { credentials: "same-origin", ...opts });
  if (r.status === 401) { location.href = "/login"; throw new Error("login required"); }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
  return data;
}

function treeItem(node) {
  const li = el("li");
  const b = el("button");
  b.dataset.path = node.path;
  b.className = node.path === state.node ? "current" : "";
  b.append(el("span", "name", node.name));
  const t = node.totals || {};
  const n = el("span", "n", String(t.screened || 0));
  if (t.fevers) n.append(el("span", "f", " · " + t.fevers));
  b.append(n);
  b.addEventListener("click", () => { state.node = node.path; refresh(); });
  li.append(b);
  const kids = node.children || [];
  if (kids.length) {
    const ul = el("ul");
    kids.forEach((c) => ul.append(treeItem(c)));
    li.append(ul);
  }
  if (node.stations && node.stations.length) {
    const ul = el("ul");
    node.stations.forEach((s) => ul.append(el("li", "station", s.site + "/" + s.station + " · " + ((s.totals || {}).screened || 0))));
    li.append(ul);
  }
  return li;
}

function renderTree(tree) {
  const nav = document.getElementById("tree");
  const ul = el("ul");
  ul.append(treeItem(tree));
  nav.replaceChildren(ul);
}

function renderTotals(body) {
  const box = document.getElementById("totals");
  box.replaceChildren();
  const head = el("div", "total");
  head.append(el("b", null, body.node.name), el("span", null, body.node.level));
  box.append(head);
  for (const [key, label] of DECISIONS) {
    const d = el("div", "total" + (key === "fevers" && body.totals[key] ? " bad" : ""));
    d.dataset.key = key;
    d.append(el("b", null, body.totals[key] || 0), el("span", null, label));
    box.append(d);
  }
  document.getElementById("day").textContent = body.day + " vs " + body.compare_day;
  const crumbs = document.getElementById("crumbs");
  crumbs.textContent = body.node.path ? body.node.path : "";
}

const HOURS = Array.from({ length: 24 }, (_, h) => String(h).padStart(2, "0"));
const GRID = { color: "#24324d" };
const TICKS = { color: "#8fa0bd" };

function chart(id, config) {
  if (state.charts[id]) {
    state.charts[id].data = config.data;
    state.charts[id].update("none");
    return state.charts[id];
  }
  state.charts[id] = new Chart(document.getElementById(id), config);
  return state.charts[id];
}

function renderCharts(body) {
  if (typeof Chart === "undefined") return;
  Chart.defaults.color = "#8fa0bd";
  const scales = { x: { grid: GRID, ticks: TICKS }, y: { grid: GRID, ticks: TICKS, beginAtZero: true } };
  chart("chart-hourly", {
    type: "line",
    data: { labels: HOURS, datasets: [
      { label: "今天 · today " + body.day, data: body.hourly.today, borderColor: "#22c55e", backgroundColor: "#22c55e", tension: 0.25 },
      { label: "上周同日 · " + body.compare_day, data: body.hourly.last_week, borderColor: "#8fa0bd", backgroundColor: "#8fa0bd", borderDash: [6, 4], tension: 0.25 },
    ] },
    options: { animation: false, maintainAspectRatio: false, scales },
  });
  chart("chart-fever", {
    type: "bar",
    data: { labels: HOURS, datasets: [{ label: "% 发热 · fever", data: body.fever_rate_pct, backgroundColor: "#ef4444" }] },
    options: { animation: false, maintainAspectRatio: false, scales, plugins: { legend: { display: false } } },
  });
  const c = body.colours;
  chart("chart-colours", {
    type: "doughnut",
    data: { labels: ["绿 green", "黄 yellow", "红 red", "无 none"],
      datasets: [{ data: [c.green, c.yellow, c.red, c.none], backgroundColor: ["#22c55e", "#f59e0b", "#ef4444", "#6b7280"] }] },
    options: { animation: false, maintainAspectRatio: false },
  });
  const box = document.getElementById("sparks");
  const seen = new Set();
  for (const s of body.sparklines) {
    seen.add(s.path);
    let card = box.querySelector(`[data-path="${CSS.escape(s.path)}"]`);
    if (!card) {
      card = el("div", "spark");
      card.dataset.path = s.path;
      const t = el("div", "t");
      t.append(el("span", "name"), el("span", "n dim"));
      const canvas = el("canvas");
      const holder = el("div", "box");
      holder.append(canvas);
      card.append(t, holder);
      box.append(card);
      state.charts.sparks[s.path] = new Chart(canvas, {
        type: "line",
        data: { labels: HOURS, datasets: [{ data: s.screened, borderColor: "#22c55e", borderWidth: 1.5, pointRadius: 0, fill: false }] },
        options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false }, tooltip: { enabled: false } },
          scales: { x: { display: false }, y: { display: false, beginAtZero: true } } },
      });
    } else {
      const sc = state.charts.sparks[s.path];
      sc.data.datasets[0].data = s.screened;
      sc.update("none");
    }
    card.querySelector(".name").textContent = s.name;
    card.querySelector(".n").textContent = String(s.screened.reduce((a, b) => a + b, 0));
  }
  for (const card of [...box.children]) {
    if (!seen.has(card.dataset.path)) {
      const sc = state.charts.sparks[card.dataset.path];
      if (sc) sc.destroy();
      delete state.charts.sparks[card.dataset.path];
      card.remove();
    }
  }
}

function fmtTime(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  return d.toLocaleString("zh-CN", { hour12: false });
}

function renderAlarms(list) {
  const box = document.getElementById("alarms");
  if (box.contains(document.activeElement) && document.activeElement.tagName === "TEXTAREA") return; // someone is typing a note
  box.replaceChildren();
  if (!list.length) box.append(el("div", "dim", "无告警 · no alarms"));
  const canAct = RANK[state.role] >= RANK.tracer;
  for (const a of list) {
    const card = el("div", "alarm " + a.state);
    card.dataset.key = a.site + "/" + a.station + "/" + a.event_id;
    card.dataset.state = a.state;
    const h = el("div", "h");
    h.append(el("span", null, a.site + "/" + a.station), el("span", null, a.decision || "alarm"));
    card.append(h);
    const temp = a.temperature_c ? a.temperature_c.toFixed(1) + " °C · " : "";
    card.append(el("div", null, temp + (a.reason || "") + " · " + fmtTime(a.ts)));
    if (a.ack_by) card.append(el("div", "by", "已确认 · acknowledged by " + a.ack_by + " " + fmtTime(a.ack_at)));
    if (a.closed_by) {
      card.append(el("div", "by", "已关闭 · closed by " + a.closed_by + " " + fmtTime(a.closed_at)));
      card.append(el("div", "note", a.note || ""));
    }
    const key = { site: a.site, station: a.station, event_id: a.event_id };
    if (canAct && a.state === "open") {
      const b = el("button", "primary ack", "确认 · Acknowledge");
      b.addEventListener("click", () => act("/api/alarms/ack", key, card));
      card.append(b);
    } else if (canAct && a.state === "acknowledged") {
      const note = el("textarea", "note-input");
      note.placeholder = "处置说明 · note (required)";
      note.maxLength = 500;
      const b = el("button", "primary close", "关闭 · Close");
      b.addEventListener("click", () => act("/api/alarms/close", { ...key, note: note.value }, card));
      card.append(note, b);
    }
    box.append(card);
  }
}

async function act(path, body, card) {
  try {
    await api(path, body);
  } catch (err) {
    card.append(el("div", "error", String(err.message || err)));
    return;
  }
  document.activeElement && document.activeElement.blur();
  await refreshAlarms();
}

async function refreshAlarms() {
  try {
    const data = await api("/api/alarms");
    renderAlarms(data.alarms);
  } catch (err) { /* shown on the next refresh */ }
}

async function refresh() {
  try {
    const body = await api("/api/dashboard?node=" + encodeURIComponent(state.node));
    state.version = body.tree_version;
    const version = document.getElementById("tree-version");
    if (version) version.textContent = "v" + body.tree_version;
    renderTree(body.tree);
    renderTotals(body);
    renderCharts(body);
    document.body.dataset.loaded = "1";
  } catch (err) {
    console.error("centre refresh:", err);
    if (String(err.message).includes("no such node")) { state.node = ""; }
  }
  await refreshAlarms();
}

function setupAdmin() {
  const section = document.getElementById("admin");
  if (RANK[state.role] < RANK.admin) { section.remove(); return; }
  section.hidden = false;
  document.getElementById("edit-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { version: state.version, op: document.getElementById("edit-op").value };
    for (const f of ["path", "parent", "key", "name", "station", "checkpoint"]) {
      const v = document.getElementById("edit-" + f).value.trim();
      if (v || (f === "parent" && body.op === "add")) body[f] = v;
    }
    const out = document.getElementById("edit-result");
    try {
      const r = await api("/api/tree/edit", body);
      out.className = "dim";
      out.textContent = "已保存 · saved v" + r.version;
      state.version = r.version;
    } catch (err) {
      out.className = "error";
      out.textContent = String(err.message || err);
    }
    await refresh();
  });
}

async function start() {
  const me = await api("/api/whoami");
  state.role = me.role;
  state.user = me.user;
  document.getElementById("who").textContent = me.user + " (" + me.role + ")";
  document.body.dataset.role = me.role;
  const traceLink = document.getElementById("nav-trace");  // tracing is for tracer and admin only (the API says 403 too)
  if (RANK[me.role] >= RANK.tracer) traceLink.hidden = false; else traceLink.remove();
  setupAdmin();
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
