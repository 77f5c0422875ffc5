// The centre's printable report: one table per tree level. Every name and value reaches the DOM through
// textContent (a node name carrying markup shows as text); no inline script (CSP script-src 'self').
"use strict";

const RANK = { viewer: 0, tracer: 1, admin: 2 };
const COUNTERS = [
  ["screened", "筛查 screened"], ["pass", "通过 pass"], ["deny_fever", "发热拒绝 fever denied"], ["deny_code", "码拒绝 code denied"],
  ["retry", "重试 retry"], ["manual_check", "人工 manual"], ["fevers", "发热 fevers"], ["alarms", "告警 alarms"],
  ["outsider_vehicles", "外来车辆 outsider vehicles"], ["flagged_visits", "标记来访 flagged visits"],
  ["registrations", "登记 registrations"], ["missing_events", "缺失事件 missing events"], ["offline_over_10min", "离线>10分钟 offline >10 min"],
];
const LEVELS = [
  ["district", "区县 · District"], ["town", "街道/乡镇 · Towns"], ["grid", "网格 · Grids"],
  ["checkpoint", "卡口 · Checkpoints"], ["unassigned", "未分配 · Unassigned"],
];

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

async function getJson(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  if (r.status === 401) { location.href = "/login"; throw new Error("login required"); }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
  return data;
}

function collect(node, byLevel, depth) {
  (byLevel[node.level] = byLevel[node.level] || []).push({ node: node, depth: depth });
  for (const child of node.children || []) collect(child, byLevel, depth + 1);
}

function table(caption, rows, nameOf, totalsOf, cls) {
  const t = el("table", "grid level " + (cls || ""));
  t.append(el("caption", null, caption));
  const head = el("thead");
  const hr = el("tr");
  hr.append(el("th", "name", "名称 · name"));
  for (const [, label] of COUNTERS) hr.append(el("th", null, label));
  head.append(hr);
  t.append(head);
  const body = el("tbody");
  for (const row of rows) {
    const tr = el("tr");
    const name = nameOf(row);
    const th = el("th", "name");
    th.append(el("span", "n", name[0]));
    if (name[1]) th.append(el("span", "path", name[1]));
    tr.append(th);
    const totals = totalsOf(row) || {};
    for (const [key] of COUNTERS) tr.append(el("td", "c-" + key, totals[key] || 0));
    tr.dataset.path = name[1] || "";
    body.append(tr);
  }
  t.append(body);
  return t;
}

function query() {
  const period = document.getElementById("period").value;
  const p = new URLSearchParams();
  if (period === "day") p.set("day", document.getElementById("day").value);
  else p.set("week", document.getElementById("week").value.trim());
  const node = document.getElementById("node").value;
  if (node) p.set("node", node);
  return p;
}

function fillNodes(tree, current) {
  const select = document.getElementById("node");
  if (select.dataset.filled) return;
  select.replaceChildren(el("option", null, "全区 · whole district"));
  select.firstChild.value = "";
  const walk = (node, depth) => {
    if (node.path) {
      const o = el("option", null, "\u00a0\u00a0".repeat(depth) + node.name + " (" + node.path + ")");
      o.value = node.path;
      select.append(o);
    }
    for (const child of node.children || []) walk(child, depth + 1);
  };
  walk(tree, 0);
  select.value = current || "";
  select.dataset.filled = "1";
}

async function show() {
  const p = query();
  history.replaceState(null, "", "/reports?" + p.toString());
  const csv = new URLSearchParams(p);
  csv.set("format", "csv");
  document.getElementById("csv").href = "/api/reports?" + csv.toString();
  const status = document.getElementById("status");
  status.textContent = "生成中 · Loading…";
  status.className = "status";
  try {
    const body = await getJson("/api/reports?" + p.toString());
    if (!p.get("node")) fillNodes(body.tree, "");
    render(body);
    status.textContent = "";
    document.body.dataset.loaded = "1";
  } catch (err) {
    status.textContent = String(err.message || err);
    status.className = "status error";
    document.body.dataset.loaded = "error";
  }
}

function render(body) {
  const span = body.from === body.to ? body.from : body.from + " – " + body.to;
  const where = body.tree ? body.tree.name : "";
  document.getElementById("title").textContent = (body.days === 1 ? "日报 · Daily report " : "周报 · Weekly report ") + span + " · " + where;
  document.getElementById("meta").textContent =
    "时区 · time zone " + body.timezone + " · 区域树版本 · tree version " + body.tree_version + " · 生成于 · generated " + body.generated_at +
    (body.offline_tracked ? "" : " · 离线时长未记录 · offline spells not tracked");
  const levels = document.getElementById("levels");
  levels.replaceChildren();
  const byLevel = {};
  collect(body.tree, byLevel, 0);
  for (const [level, caption] of LEVELS) {
    const rows = byLevel[level];
    if (!rows || !rows.length) continue;
    levels.append(table(caption, rows, (r) => [r.node.name, r.node.path], (r) => r.node.totals, level));
  }
  if (body.stations.length) {
    levels.append(table("站点 · Stations", body.stations, (s) => [s.site + "/" + s.station, ""], (s) => s, "station"));
  }
}

async function start() {
  const me = await getJson("/api/whoami");
  document.getElementById("who").textContent = me.user + " (" + me.role + ")";
  if (RANK[me.role] >= RANK.tracer) document.getElementById("nav-trace").hidden = false;
  else document.getElementById("nav-trace").remove();
  const params = new URLSearchParams(location.search);
  const today = new Date();
  const iso = (d) => d.getFullYear() + "-" + String(d.getMonth() + 1).padStart(2, "0") + "-" + String(d.getDate()).padStart(2, "0");
  document.getElementById("day").value = params.get("day") || iso(today);
  if (params.get("week")) {
    document.getElementById("period").value = "week";
    document.getElementById("week").value = params.get("week");
  }
  const switchPeriod = () => {
    const week = document.getElementById("period").value === "week";
    document.getElementById("day-label").hidden = week;
    document.getElementById("week-label").hidden = !week;
  };
  switchPeriod();
  document.getElementById("period").addEventListener("change", switchPeriod);
  document.getElementById("report-form").addEventListener("submit", (e) => { e.preventDefault(); show(); });
  document.getElementById("print").addEventListener("click", () => window.print());
  document.getElementById("node").addEventListener("change", () => show());
  if (params.get("node")) {
    const body = await getJson("/api/reports?day=" + encodeURIComponent(document.getElementById("day").value)).catch(() => null);
    if (body) fillNodes(body.tree, params.get("node"));
  }
  await show();
}

start();
