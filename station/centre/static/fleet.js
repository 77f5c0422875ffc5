// The centre's fleet page. Every value from the server — station names, versions, hashes, a station's
// answer — reaches the DOM through textContent (never as markup): a hostile station string shows as text.
"use strict";

const REFRESH_MS = 10000;
const state = { role: "viewer", pushes: { available: false }, targets: "", fileMax: 0 };

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

function ago(ts) {
  if (ts === null || ts === undefined) return "";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}

function cell(key, text, cls, title) {
  const td = el("td", cls || "", text);
  td.dataset.key = key;
  if (title) td.title = title;
  return td;
}

function stateCell(r) {
  if (r.no_state) return cell("state", "无状态 · no state", "unknown", "heard on events, never published a status");
  if (r.state === "online") return cell("state", "在线 · online", "ok");
  if (r.state === "offline" || r.state === "stopped") {
    const long = r.offline_over_10min;
    const text = (long ? "离线 > 10 min · OFFLINE " : "离线 · " + r.state + " ") + (r.offline_s !== null ? ago(Date.now() / 1000 - r.offline_s) : "");
    return cell("state", text.trim(), long ? "bad" : "warn");
  }
  return cell("state", r.state || "?", "unknown");
}

function listCell(key, version, behind) {
  if (version === null || version === undefined) return cell(key, "?", "unknown");
  return cell(key, "v" + version + (behind ? " ↓ behind" : ""), behind ? "warn" : "");
}

function doctorCell(r) {
  if (r.doctor_exit === null || r.doctor_exit === undefined) return cell("doctor", "未运行 · never run", "unknown");
  const when = r.doctor_at ? " · " + ago(r.doctor_at) + " ago" : "";
  if (r.doctor_exit === 0) return cell("doctor", "ok" + when, "ok", (r.doctor_warned || []).join(", "));
  const failed = (r.doctor_failed || []).join(", ");
  return cell("doctor", "exit " + r.doctor_exit + (failed ? ": " + failed : "") + when, "bad", (r.doctor_warned || []).join(", "));
}

function modelsCell(r) {
  const models = r.models || null;
  if (!models) return cell("models", "?", "unknown");
  const names = Object.keys(models).sort();
  const title = names.map((n) => n + " " + models[n]).join("\n");
  return cell("models", names.length + " · " + (r.models_manifest || "?"), "hash", title);
}

const REPAIR_LABELS = [  // most pressing first: the cell's colour is the first state present
  ["given_up", "已放弃 · given up", "bad"], ["asked", "补传中 · asked", "warn"],
  ["not_kept", "站点无记录 · not kept", "dim"], ["waiting", "待补传 · waiting", "dim"],
];

function missingCell(r) {
  const n = r.missing_events || 0;
  const td = cell("missing", n ? String(n) : "", n ? "warn" : "");
  if (n && r.gaps) td.append(el("span", "dim", " · " + r.gaps + (r.gaps === 1 ? " gap" : " gaps")));
  const rep = r.repair;
  if (!rep) return td;
  const open = REPAIR_LABELS.filter(([key]) => rep[key]);
  open.forEach(([key, label, cls]) => {
    td.append(el("span", "repair " + cls, label + (rep[key] > 1 ? " ×" + rep[key] : "")));
    td.dataset[key] = String(rep[key]);
  });
  if (open.length) td.className = open[0][2] === "dim" ? (n ? "warn" : "") : open[0][2];
  if (rep.answer) td.title = "最近回复 · latest answer" + (rep.answered_at ? " (" + ago(rep.answered_at) + " ago)" : "") + ": " + rep.answer;
  return td;
}

function stationRow(r) {
  const tr = el("tr", "station");
  tr.dataset.station = r.site + "/" + r.station;
  tr.append(cell("name", r.site + "/" + r.station));
  tr.append(stateCell(r));
  tr.append(cell("version", r.version || "?", r.version ? "" : "unknown"));
  tr.append(modelsCell(r));
  tr.append(listCell("trust", r.trust_list_version, r.trust_list_behind));
  tr.append(listCell("residents", r.resident_list_version, r.resident_list_behind));
  tr.append(cell("config", (r.config_hash || "?") + (r.config_differs ? " ≠ most" : ""), r.config_differs ? "hash warn" : "hash"));
  tr.append(doctorCell(r));
  const clock = r.clock_synced === true ? ["同步 · synced", "ok"] : r.clock_synced === false ? ["未同步 · NOT synced", "bad"] : ["?", "unknown"];
  tr.append(cell("clock", clock[0], clock[1]));
  const disk = r.disk_free_mb === null || r.disk_free_mb === undefined ? "?"
    : r.disk_free_mb + " MB free" + (r.disk_used_pct !== null && r.disk_used_pct !== undefined ? " · " + Math.round(r.disk_used_pct) + " %" : "");
  tr.append(cell("disk", disk, r.disk_used_pct >= 90 ? "bad" : (disk === "?" ? "unknown" : "")));
  const outbox = r.outbox_pending === null || r.outbox_pending === undefined ? "?"
    : String(r.outbox_pending) + (r.outbox_oldest_age_s ? " · oldest " + r.outbox_oldest_age_s + " s" : "") + (r.outbox_dropped ? " · dropped " + r.outbox_dropped : "");
  tr.append(cell("outbox", outbox, outbox === "?" ? "unknown" : (r.outbox_dropped ? "warn" : "")));
  tr.append(missingCell(r));
  if (state.role === "admin") {
    const td = el("td", "push-col");
    const b = el("button", "small pick", "推送 · push");
    b.addEventListener("click", () => pickTarget("station:" + r.site + "/" + r.station));
    td.append(b);
    tr.append(td);
  }
  return tr;
}

function groupRow(node) {
  const tr = el("tr", "group level-" + node.level);
  tr.dataset.path = node.path;
  const th = el("th");
  th.colSpan = 12;
  th.append(el("span", "name", node.name));
  const s = node.summary || {};
  th.append(el("span", "sum", s.stations + " stations · " + s.online + " online" +
    (s.offline_over_10min ? " · " + s.offline_over_10min + " offline > 10 min" : "") +
    (s.doctor_failing ? " · " + s.doctor_failing + " doctor failing" : "") +
    (s.missing_events ? " · " + s.missing_events + " missing" : "")));
  tr.append(th);
  if (state.role === "admin") {
    const td = el("td", "push-col");
    if (s.stations) {
      const b = el("button", "small pick", "推送 · push");
      b.addEventListener("click", () => pickTarget("node:" + node.path));
      td.append(b);
    }
    tr.append(td);
  }
  return tr;
}

function walk(node, depth, rows, targets) {
  rows.push(groupRow(node));
  targets.push(["node:" + node.path, "\u00a0".repeat(depth * 3) + node.name + " (" + ((node.summary || {}).stations || 0) + ")"]);
  (node.stations || []).forEach((r) => {
    rows.push(stationRow(r));
    targets.push(["station:" + r.site + "/" + r.station, "\u00a0".repeat(depth * 3 + 3) + r.site + "/" + r.station]);
  });
  (node.children || []).forEach((c) => walk(c, depth + 1, rows, targets));
}

function renderSummary(s, generated) {
  const box = document.getElementById("summary");
  const items = [
    ["stations", "站点 · stations", s.stations], ["online", "在线 · online", s.online],
    ["offline_over_10min", "离线 > 10 min · offline", s.offline_over_10min], ["doctor_failing", "自检失败 · doctor failing", s.doctor_failing],
    ["clock_unsynced", "时钟未同步 · clock unsynced", s.clock_unsynced], ["trust_list_behind", "信任列表落后 · trust list behind", s.trust_list_behind],
    ["config_hashes", "配置种类 · config hashes", s.config_hashes], ["no_state", "无状态 · no state", s.no_state],
    ["missing_events", "缺失事件 · missing events", s.missing_events], ["stations_missing", "有缺失站点 · stations missing", s.stations_missing],
    ["repairs_given_up", "补传放弃 · repair given up", s.repairs_given_up], ["repairs_not_kept", "站点无记录 · not kept", s.repairs_not_kept],
  ];
  box.replaceChildren(...items.map(([key, label, n]) => {
    const d = el("div", "total" + (n && key !== "stations" && key !== "online" && key !== "config_hashes" ? " bad" : ""));
    d.dataset.key = key;
    d.append(el("b", "", n === undefined || n === null ? 0 : n), el("span", "", label));
    return d;
  }));
  document.getElementById("generated").textContent = new Date(generated * 1000).toLocaleTimeString();
}

function renderTargets(targets) {
  const sig = JSON.stringify(targets);
  if (sig === state.targets) return;
  state.targets = sig;
  const select = document.getElementById("push-target");
  const keep = select.value;
  select.replaceChildren(...targets.map(([value, label]) => {
    const o = el("option", "", label);
    o.value = value;
    return o;
  }));
  if (targets.some(([v]) => v === keep)) select.value = keep;
}

function pickTarget(value) {
  const select = document.getElementById("push-target");
  select.value = value;
  select.focus();
}

async function refresh() {
  try {
    const body = await api("/api/fleet");
    state.role = body.you.role;
    document.getElementById("who").textContent = body.you.user + " (" + body.you.role + ")";
    setupPush(body.pushes);
    renderSummary(body.summary, body.generated_at);
    const rows = [];
    const targets = [];
    walk(body.tree, 0, rows, targets);
    document.getElementById("rows").replaceChildren(...rows);
    if (state.role === "admin") renderTargets(targets);
    document.body.dataset.loaded = "1";
  } catch (e) {
    console.error("fleet refresh failed: " + e.message);
  }
}

function setupPush(pushes) {
  const section = document.getElementById("push");
  if (state.role !== "admin") {  // no push controls at all for a viewer or a tracer
    if (section) section.remove();
    document.querySelectorAll(".push-col").forEach((e) => e.remove());
    return;
  }
  state.pushes = pushes;
  state.fileMax = pushes.file_max_bytes || 0;
  const off = document.getElementById("push-unavailable");
  const form = document.getElementById("push-form");
  off.hidden = pushes.available;
  off.textContent = pushes.available ? "" : (pushes.why || "pushes are unavailable");
  form.hidden = !pushes.available;
  document.getElementById("push-key").textContent = pushes.key_id ? "key " + pushes.key_id : "";
  const t = document.getElementById("push-threshold");
  if (pushes.threshold_range) { t.min = pushes.threshold_range[0]; t.max = pushes.threshold_range[1]; }
}

function showCommand() {
  const c = document.getElementById("push-command").value;
  document.getElementById("push-threshold-label").hidden = c !== "set-threshold";
  document.getElementById("push-file-label").hidden = c === "set-threshold";
}

function showResults(outcomes) {
  const table = document.getElementById("push-results");
  table.hidden = false;
  table.querySelector("tbody").replaceChildren(...outcomes.map((o) => {
    const tr = el("tr");
    tr.dataset.station = o.site + "/" + o.station;
    tr.dataset.ok = o.ok ? "1" : "0";
    tr.append(el("td", "", o.site + "/" + o.station));
    tr.append(el("td", o.ok ? "ok" : "bad", o.ok ? "ok" : "拒绝 · REFUSED"));
    tr.append(el("td", "", o.reason));
    tr.append(el("td", "", o.error ? o.error : (o.result ? JSON.stringify(o.result) : "")));
    return tr;
  }));
}

async function loadAudit() {
  if (state.role !== "admin") return;
  try {
    const body = await api("/api/fleet/pushes");
    document.querySelector("#push-audit tbody").replaceChildren(...body.pushes.map((a) => {
      const tr = el("tr");
      const d = a.detail || {};
      tr.dataset.action = a.action;
      tr.append(el("td", "", new Date(a.at * 1000).toLocaleString()));
      tr.append(el("td", "", a.actor + (a.role ? " (" + a.role + ")" : "")));
      tr.append(el("td", "", a.action + (d.args ? " " + JSON.stringify(d.args) : "")));
      tr.append(el("td", "", a.target || ""));
      tr.append(el("td", d.ok ? "ok" : "bad", (d.ok ? "ok" : "refused") + (d.reason ? " · " + d.reason : "") + (d.error ? " · " + d.error : "")));
      tr.append(el("td", "", a.reason || ""));
      return tr;
    }));
  } catch (e) {
    console.error("push audit refresh failed: " + e.message);
  }
}

async function submitPush(ev) {
  ev.preventDefault();
  const err = document.getElementById("push-error");
  const button = document.getElementById("push-send");
  err.textContent = "";
  const [kind, ...rest] = document.getElementById("push-target").value.split(":");
  const target = rest.join(":");
  const body = { command: document.getElementById("push-command").value, reason: document.getElementById("push-reason").value };
  if (kind === "station") body.station = target; else body.node = target;
  if (body.command === "set-threshold") {
    body.fever_threshold_c = Number(document.getElementById("push-threshold").value);
  } else {
    const file = document.getElementById("push-file").files[0];
    if (!file) { err.textContent = "file: choose a JSON file"; return; }
    if (state.fileMax && file.size > state.fileMax) { err.textContent = "file: " + file.size + " bytes: at most " + state.fileMax + " bytes"; return; }
    body.file = await file.text();
  }
  button.disabled = true;
  button.textContent = "推送中 · pushing…";
  try {
    const result = await api("/api/fleet/push", body);
    showResults(result.outcomes);
    document.getElementById("push-error").textContent = "";
    document.getElementById("push-elapsed").textContent = result.outcomes.length + " stations answered or timed out in " + result.elapsed_ms + " ms";
  } catch (e) {
    err.textContent = e.message;
  } finally {
    button.disabled = false;
    button.textContent = "推送 · Push";
    loadAudit();
    refresh();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("push-command").addEventListener("change", showCommand);
  document.getElementById("push-form").addEventListener("submit", submitPush);
  showCommand();
  refresh().then(loadAudit);
  setInterval(refresh, REFRESH_MS);
});
