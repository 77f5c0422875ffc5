// Command-centre board: tiles and totals from /api/stream (SSE).
// Every value a station sent reaches the page through textContent or createElement, never as markup:
// a station is not trusted (the server types and caps its values too, station/board/schema.py).
"use strict";

const T = {
  zh: { title:"指挥大屏", stations:"卡口", online:"在线", offline:"离线", screened_today:"今日筛查", alarms_today:"今日告警",
        backlog:"待发送", waiting:"等待卡口数据…", l0:"离线", l1:"告警", l2:"积压", l3:"故障", l4:"正常", stopped:"已停止",
        no_status:"无状态", last:"最近结果", temp:"体温", today:"今日", alarms:"告警", outbox:"待发送", nopic:"暂无画面",
        devices:"设备", recent_alarms:"最近告警", none:"无", ago:"前", s:"秒", min:"分钟", h:"小时",
        pass:"通过", deny_fever:"发热拦截", deny_code:"健康码拦截", retry:"重试", manual_check:"人工复核", fever:"发热", outbox_overflow:"缓存溢出", alarm:"告警",
        source_staff:"人工核验", unknown:"未知", picture:"画面", blurred:"人脸已模糊", station_says:"卡口自报今日", lang:"English", logout:"退出" },
  en: { title:"Command centre", stations:"Checkpoints", online:"Online", offline:"Offline", screened_today:"Screened today",
        alarms_today:"Alarms today", backlog:"Backlog", waiting:"Waiting for checkpoints…", l0:"OFFLINE", l1:"ALARM", l2:"BACKLOG",
        l3:"FAULT", l4:"OK", stopped:"stopped", no_status:"no status", last:"Last", temp:"Temp.", today:"Today", alarms:"Alarms",
        outbox:"Backlog", nopic:"No picture yet", devices:"Devices", recent_alarms:"Recent alarms", none:"none", ago:"ago", s:"s", min:"min", h:"h",
        pass:"pass", deny_fever:"fever", deny_code:"code denied", retry:"retry", manual_check:"manual check", fever:"fever", outbox_overflow:"outbox overflow", alarm:"alarm",
        source_staff:"checked by staff", unknown:"unknown", picture:"Picture", blurred:"faces blurred", station_says:"Station reports today", lang:"中文", logout:"Log out" },
};
// Vehicle lanes: a visit (a vehicle and its occupants' screenings) and outsider registrations.
Object.assign(T.zh, { vehicle:"车辆", occupants:"人", fevers:"发热", denied:"拦截", flagged:"⚑ 有人被拦截", registered:"已登记",
  visits:"最近车辆", registrations:"外来车辆登记", plate_unread:"未识别车牌", resident_vehicle:"本地车辆", outsider_vehicle:"外来车辆",
  unread_vehicle:"未识别", entry:"进", exit:"出", visit:"探亲访友", delivery:"送货", work:"施工维修", official:"公务", pickup:"接送" });
Object.assign(T.en, { vehicle:"Vehicle", occupants:"occupants", fevers:"fever", denied:"denied", flagged:"⚑ occupant denied",
  registered:"registered", visits:"Recent vehicles", registrations:"Outsider registrations", plate_unread:"plate unread",
  resident_vehicle:"resident", outsider_vehicle:"outsider", unread_vehicle:"unread", entry:"in", exit:"out", visit:"visit",
  delivery:"delivery", work:"building / repair work", official:"official business", pickup:"pick-up / drop-off" });
const DECISIONS = new Set(["pass", "deny_fever", "deny_code", "retry", "manual_check"]);
const VISIT_WORDS = new Set(["resident_vehicle", "outsider_vehicle", "unread_vehicle", "entry", "exit", "visit", "delivery", "work", "official", "pickup"]);
const word = (v) => (VISIT_WORDS.has(v) ? t(v) : "");  // only our own words for the station's tokens
// "浙A12345 · 3 occupants · 1 fever": the plate is the station's text (shown as text), the rest our own words.
function visitText(v) {
  const parts = [typeof v.plate === "string" && v.plate ? v.plate : t("plate_unread"), `${num(v.occupants) ?? 0} ${t("occupants")}`];
  if (num(v.fever)) parts.push(`${v.fever} ${t("fevers")}`);
  if (num(v.denied) && num(v.denied) > (num(v.fever) ?? 0)) parts.push(`${v.denied - (num(v.fever) ?? 0)} ${t("denied")}`);
  if (v.registered === true) parts.push(t("registered"));
  return parts.join(" · ");
}
function registrationText(r) {
  return [typeof r.plate === "string" ? r.plate : "–", word(r.reason), typeof r.destination === "string" ? r.destination : "",
          typeof r.phone_last4 === "string" ? "****" + r.phone_last4 : ""].filter(Boolean).join(" · ");
}
let lang = localStorage.getItem("board.lang") === "en" ? "en" : "zh";
let data = null, openKey = null;
const tiles = new Map();
const $ = (id) => document.getElementById(id);
// Only our own label keys are translated; any other text is shown as it is (as text).
const t = (k) => (Object.prototype.hasOwnProperty.call(T[lang], k) ? T[lang][k] : String(k ?? ""));
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const level = (s) => (Number.isInteger(s.level) && s.level >= 0 && s.level <= 4 ? s.level : 0);

// el("div", {class: "x", "data-key": k}, child, "text", …): children are nodes or plain text.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}
function age(ts) {
  if (!num(ts)) return "";
  const d = Math.max(0, Date.now() / 1000 - ts);
  return d < 90 ? `${Math.round(d)}${t("s")}` : d < 5400 ? `${Math.round(d / 60)}${t("min")}` : `${Math.round(d / 3600)}${t("h")}`;
}
function tempText(v) { return num(v) === null ? "--.-" : v.toFixed(1) + " °C"; }
function decisionClass(d) { return DECISIONS.has(d) ? "dec-" + d : ""; }
function decisionText(d) { return DECISIONS.has(d) ? t(d) : "–"; }
// Who decided, when it was not the station itself: only our own word, never the station's text.
function sourceText(last) { return last.decision_source === "staff" ? ` · ${t("source_staff")}` : ""; }
function snapshotUrl(s) {
  return `/api/stations/${encodeURIComponent(s.site)}/${encodeURIComponent(s.station)}/snapshot.jpg?ts=${num(s.snapshot.ts) ?? 0}`;
}
function stateLabel(s) {
  const lv = level(s);
  return lv === 0 && s.state !== "offline" ? t(s.state === "stopped" ? "stopped" : "no_status") : t("l" + lv);
}

function applyLang() {
  tiles.clear(); $("grid").textContent = "";  // every label changes
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-t]").forEach((e) => { e.textContent = t(e.dataset.t); });
  $("lang").textContent = t("lang");
  document.title = lang === "zh" ? "指挥大屏 · Command centre" : "Command centre · 指挥大屏";
  render(); tick();
}

// What a tile shows: a tile is rebuilt only when this changes.
function signature(s) {
  const last = s.last || {};
  const visit = Array.isArray(s.visits) && s.visits.length ? s.visits[0] : null;
  return JSON.stringify([lang, visit && visit.visit_id, s.vehicle_flagged === true, level(s), s.state, s.site, s.station, last.decision, last.decision_source === "staff", num(last.temperature_c), num(s.today && s.today.screened),
                         num(s.today && s.today.alarms), num(s.backlog && s.backlog.pending), s.snapshot ? num(s.snapshot.ts) : null]);
}
function tile(s) {
  const lv = level(s), last = s.last || {}, today = s.today || {};
  const pending = s.backlog ? num(s.backlog.pending) : null;
  const pic = el("div", { class: "pic" },
    s.snapshot ? el("img", { src: snapshotUrl(s), alt: s.key }) : el("div", { class: "nopic" }, t("nopic")),
    el("span", { class: `badge l${lv}` }, stateLabel(s)),
    s.snapshot ? el("span", { class: "age", "data-ts": num(s.snapshot.ts) ?? "" }) : null);
  const alarms = num(today.alarms) ?? 0;
  const info = el("div", { class: "info" },
    el("div", { class: "name" }, el("span", {}, s.station), el("small", {}, s.site)),
    el("div", { class: "kv" }, el("span", {}, t("last")),
       el("b", { class: decisionClass(last.decision), "data-source": last.decision_source === "staff" ? "staff" : "station" },
          decisionText(last.decision) + sourceText(last))),
    el("div", { class: "kv" }, el("span", {}, t("temp")), el("b", {}, tempText(last.temperature_c))),
    el("div", { class: "kv" }, el("span", {}, t("today")), el("b", { class: "count" }, num(today.screened) ?? 0)),
    el("div", { class: "kv" }, el("span", {}, `${t("alarms")} / ${t("outbox")}`),
       el("b", {}, el("span", { class: alarms ? "dec-deny_fever" : "" }, alarms), " / ", pending ?? "–")));
  const visit = Array.isArray(s.visits) && s.visits.length ? s.visits[0] : null;
  if (visit) {
    const flagged = visit.flagged === true;
    info.append(el("div", { class: "visit" + (flagged ? " flagged" : ""), "data-testid": "visit", "data-flagged": flagged ? "1" : "0" },
      el("span", {}, t("vehicle")), el("b", { class: flagged ? "dec-deny_fever" : "" }, (flagged ? t("flagged") + " · " : "") + visitText(visit))));
  }
  return el("div", { class: `tile l${lv}`, "data-key": s.key, "data-level": lv, "data-state": s.state }, pic, info);
}
function render() {
  if (!data) return;
  const tt = data.totals || {};
  for (const k of ["stations", "online", "offline", "screened", "alarms", "backlog"]) $("t-" + k).textContent = num(tt[k]) ?? 0;
  $("t-offline-box").classList.toggle("bad", num(tt.offline) > 0); $("t-alarms-box").classList.toggle("bad", num(tt.alarms) > 0);
  // Keyed update: only a tile whose content changed is rebuilt (its picture re-fetched), the others
  // are just put in the new order — a district has hundreds of tiles and updates arrive every second.
  const grid = $("grid");
  const stations = Array.isArray(data.stations) ? data.stations : [];
  if (!stations.length) { grid.replaceChildren(el("div", { class: "empty" }, t("waiting"))); tiles.clear(); return; }
  grid.querySelectorAll(".empty").forEach((e) => e.remove());
  const keep = new Set();
  stations.forEach((s) => {
    const sig = signature(s);
    let entry = tiles.get(s.key);
    if (!entry || entry.sig !== sig) {
      const node = tile(s);
      const img = node.querySelector("img");
      if (entry && img && !img.complete) {
        // A new picture: keep showing the old tile until it has loaded (no black flash on the wall).
        entry.sig = sig; entry.pending = node;
        const swap = () => { if (entry.pending === node) { entry.el.replaceWith(node); entry.el = node; entry.pending = null; fillAges(); } };
        img.addEventListener("load", swap, { once: true });
        img.addEventListener("error", swap, { once: true });
      } else {
        if (entry) entry.el.replaceWith(node);
        entry = { sig, el: node, pending: null }; tiles.set(s.key, entry);
      }
    }
    keep.add(s.key);
    grid.appendChild(entry.el);  // moves an existing node into the sorted position
  });
  for (const [key, entry] of tiles) if (!keep.has(key)) { entry.el.remove(); tiles.delete(key); }
  fillAges();
  if (openKey) renderOverlay();
}
function reasonText(r) { return t(r === "offline" ? "l0" : r === "alarm" ? "l1" : r === "backlog" ? "l2" : r === "fault" ? "l3" : r); }
function renderOverlay() {
  const s = data && data.stations.find((x) => x.key === openKey);
  if (!s) return;
  $("ov-img").src = s.snapshot ? snapshotUrl(s) : "";
  const last = s.last || {}, today = s.today || {}, lv = level(s);
  const recent = Array.isArray(s.recent_alarms) ? s.recent_alarms : [];
  const alarms = recent.length ? recent.map((a) => el("li", {},
      `${num(a.ts) ? new Date(a.ts * 1000).toLocaleTimeString() : ""} · ${t(a.kind)} ${num(a.temperature_c) !== null ? tempText(a.temperature_c) : ""} ${a.detail || ""}`))
    : [el("li", {}, t("none"))];
  const devices = Object.entries(s.devices || {}).map(([k, v]) => el("li", {}, `${k}: ${v ?? t("unknown")}`));
  const byDecision = Object.entries(today.by_decision || {}).map(([k, v]) => `${DECISIONS.has(k) ? t(k) : t("unknown")} ${num(v) ?? 0}`).join(" · ");
  const pending = s.backlog ? num(s.backlog.pending) : null;
  $("ov-side").replaceChildren(
    el("h2", {}, s.station, " ", el("small", {}, s.site)),
    el("p", {}, el("b", { class: `badge inline l${lv}` }, t("l" + lv)), " ", (s.reasons || []).map(reasonText).join(", ")),
    el("p", {}, `${t("last")}: `, el("b", { class: decisionClass(last.decision) }, decisionText(last.decision) + sourceText(last)),
       ` · ${tempText(last.temperature_c)} · ${age(last.ts)} ${num(last.ts) ? t("ago") : ""}`),
    el("p", {}, `${t("today")}: `, el("b", {}, num(today.screened) ?? 0), byDecision ? ` · ${byDecision}` : ""),
    num(s.station_count_today) !== null ? el("p", { class: "dim" }, `${t("station_says")}: ${s.station_count_today}`) : null,
    el("p", {}, `${t("outbox")}: `, el("b", {}, pending ?? "–"), s.backlog && s.backlog.mqtt ? ` · mqtt ${s.backlog.mqtt}` : ""),
    el("h3", {}, `${t("recent_alarms")} (${num(today.alarms) ?? 0})`), el("ul", {}, ...alarms),
    ...(Array.isArray(s.visits) && s.visits.length ? [el("h3", {}, t("visits")), el("ul", {}, ...s.visits.map((v) => el("li",
      { class: v.flagged === true ? "dec-deny_fever" : "" },
      `${num(v.ts) ? new Date(v.ts * 1000).toLocaleTimeString() : ""} · ${word(v.direction)} ${word(v.kind)} · ${visitText(v)}`)))] : []),
    ...(Array.isArray(s.registrations) && s.registrations.length ? [el("h3", {}, t("registrations")), el("ul", {}, ...s.registrations.map((r) =>
      el("li", { "data-testid": "registration" }, `${num(r.ts) ? new Date(r.ts * 1000).toLocaleTimeString() : ""} · ${registrationText(r)}`)))] : []),
    el("h3", {}, t("devices")), el("ul", {}, ...(devices.length ? devices : [el("li", {}, t("none"))])),
    el("p", { class: "dim" }, `${t("picture")}: `,
       s.snapshot ? `${age(s.snapshot.ts)} ${t("ago")}${s.snapshot.blur !== "off" ? " · " + t("blurred") : ""}` : t("nopic")));
}
$("grid").addEventListener("click", (e) => {
  const node = e.target.closest(".tile"); if (!node) return;
  openKey = node.dataset.key; $("overlay").classList.add("open"); renderOverlay();
  if (document.documentElement.requestFullscreen && !document.fullscreenElement) document.documentElement.requestFullscreen().catch(() => {});
});
function closeOverlay() { openKey = null; $("overlay").classList.remove("open"); }
$("overlay").addEventListener("click", (e) => { if (e.target.id === "overlay" || e.target.classList.contains("close")) closeOverlay(); });
$("ov-img").addEventListener("click", closeOverlay);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeOverlay(); });
$("lang").onclick = () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("board.lang", lang); applyLang(); };

async function checkSession() {
  // EventSource does not say why it failed: a 401 means the session ended (logout, expiry, user removed).
  try {
    const r = await fetch("/api/whoami", { cache: "no-store" });
    if (r.status === 401) { location.href = "/login"; return null; }
    return r.ok ? await r.json() : null;
  } catch (e) { return null; }
}
let es = null;
function connect() {
  es = new EventSource("/api/stream");
  es.addEventListener("stations", (e) => { data = JSON.parse(e.data); $("link").classList.add("up"); render(); });
  es.addEventListener("logout", () => { location.href = "/login"; });
  es.onerror = () => {
    $("link").classList.remove("up");
    checkSession();
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 3000);  // otherwise it reconnects by itself
  };
}
function fillAges() { document.querySelectorAll(".age[data-ts]").forEach((e) => { e.textContent = age(Number(e.dataset.ts)); }); }
function tick() { $("clock").textContent = new Date().toLocaleString(lang === "zh" ? "zh-CN" : "en-GB"); fillAges(); }
setInterval(tick, 1000);
applyLang();
checkSession().then((who) => { if (who) $("who").textContent = `${who.user} (${who.role})`; });
connect();
