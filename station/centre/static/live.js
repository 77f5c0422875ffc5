// The big screen's live pictures and wait-time chart (station/centre/page_live.py). Runs beside centre.js:
// it reads the selected node from centre.js's `state` and its `el`/`api` helpers, and hooks nothing else.
// Tap a checkpoint tile: an enlarged view of each of its stations' newest (station-blurred) picture;
// while it is open the page renews a watch lease, so the stations send pictures faster; closing it (or
// hiding the tab) stops the renewals and the stations fall back by themselves.
"use strict";

const LIVE = { PICTURE_MS: 1000, WATCH_MS: 10000, WAIT_MS: 15000 };
const live = { path: null, timers: [], shown: {}, waitNode: null, waitAt: 0 };

function liveOverlay() {
  let ov = document.getElementById("live-overlay");
  if (ov) return ov;
  ov = el("div", "live-overlay");
  ov.id = "live-overlay";
  ov.hidden = true;
  const panel = el("div", "live-panel");
  const head = el("div", "live-head");
  const title = el("b", "live-title");
  title.id = "live-title";
  const close = el("button", "live-close", "关闭 · Close");
  close.id = "live-close";
  close.addEventListener("click", closeLive);
  head.append(title, close);
  const pics = el("div", "live-pics");
  pics.id = "live-pics";
  const note = el("div", "dim live-note");
  note.id = "live-note";
  panel.append(head, pics, note);
  ov.append(panel);
  ov.addEventListener("click", (ev) => { if (ev.target === ov) closeLive(); });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !ov.hidden) closeLive(); });
  document.body.append(ov);
  return ov;
}

function fmtAge(ts) {
  if (!ts) return "";
  const s = Math.max(0, Date.now() / 1000 - ts);
  return s < 90 ? Math.round(s) + " s" : Math.round(s / 60) + " min";
}

const BLUR = { faces: "人脸已模糊 · faces blurred", all: "整幅模糊 · all blurred", off: "未模糊 · not blurred (site allows)" };

function renderLive(body) {
  const pics = document.getElementById("live-pics");
  const seen = new Set();
  for (const s of body.stations) {
    const key = s.site + "/" + s.station;
    seen.add(key);
    let card = pics.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (!card) {
      card = el("figure", "live-pic");
      card.dataset.key = key;
      const img = el("img");
      img.alt = key;
      card.append(img, el("figcaption", "dim"));
      pics.append(card);
    }
    const img = card.querySelector("img");
    const cap = card.querySelector("figcaption");
    const p = s.picture;
    if (p) {
      if (live.shown[key] !== p.ts) {  // a new picture is a new URL; the response itself is no-store
        live.shown[key] = p.ts;
        img.src = "/api/snapshot?site=" + encodeURIComponent(s.site) + "&station=" + encodeURIComponent(s.station) + "&ts=" + p.ts;
      }
      card.dataset.ts = String(p.ts);
      cap.textContent = key + " · " + (BLUR[p.blur] || "blur ?") + " · " + fmtAge(p.ts);
    } else {
      img.removeAttribute("src");
      cap.textContent = key + " · 暂无画面 · no picture yet";
    }
  }
  for (const card of [...pics.children]) if (!seen.has(card.dataset.key)) card.remove();
  let note = "";
  if (!body.stations.length) note = "此卡口无站点 · no station at this checkpoint";
  else if (!body.signing) note = "中心无指令密钥：按站点常规频率更新 · no command key: pictures at the stations' idle rate";
  document.getElementById("live-note").textContent = note;
}

async function pollLive() {
  if (live.path === null) return;
  try {
    renderLive(await api("/api/live?node=" + encodeURIComponent(live.path)));
  } catch (err) {
    document.getElementById("live-note").textContent = String(err.message || err);
  }
}

async function renewWatch() {
  if (live.path === null || document.hidden) return;  // a hidden tab does not hold the stations' faster rate
  for (const card of document.querySelectorAll("#live-pics .live-pic")) {
    const [site, station] = card.dataset.key.split("/");
    try {
      const r = await api("/api/watch", { site, station });
      card.dataset.watch = r.watch.why;
    } catch (err) { card.dataset.watch = "error"; }
  }
}

async function openLive(path, name) {
  const ov = liveOverlay();
  live.path = path;
  live.shown = {};
  document.getElementById("live-title").textContent = name + " · 实时画面 · live";
  document.getElementById("live-note").textContent = "";
  document.getElementById("live-pics").replaceChildren();
  ov.hidden = false;
  document.body.dataset.live = "open";
  await pollLive();
  await renewWatch();
  live.timers.push(setInterval(pollLive, LIVE.PICTURE_MS), setInterval(renewWatch, LIVE.WATCH_MS));
}

function closeLive() {
  live.timers.forEach(clearInterval);
  live.timers = [];
  live.path = null;
  const ov = document.getElementById("live-overlay");
  if (ov) ov.hidden = true;
  delete document.body.dataset.live;
}

document.getElementById("sparks").addEventListener("click", (ev) => {
  const card = ev.target.closest(".spark");
  if (!card) return;
  const name = card.querySelector(".name");
  openLive(card.dataset.path, name ? name.textContent : card.dataset.path);
});
document.addEventListener("visibilitychange", () => { if (!document.hidden) renewWatch(); });

// --- the wait-time chart ------------------------------------------------------------------------

function renderWait(body) {
  if (typeof Chart === "undefined") return;
  const secs = (list) => list.map((v) => (v === null ? null : Math.round(v / 100) / 10));
  const data = { labels: HOURS, datasets: [
    { label: "中位数 · median", data: secs(body.median_ms), borderColor: "#22c55e", backgroundColor: "#22c55e", tension: 0.25, spanGaps: false },
    { label: "P95", data: secs(body.p95_ms), borderColor: "#f59e0b", backgroundColor: "#f59e0b", borderDash: [6, 4], tension: 0.25, spanGaps: false },
  ] };
  chart("chart-wait", {
    type: "line", data,
    options: { animation: false, maintainAspectRatio: false,
      scales: { x: { grid: GRID, ticks: TICKS }, y: { grid: GRID, ticks: TICKS, beginAtZero: true, title: { display: true, text: "s", color: "#8fa0bd" } } } },
  });
  document.getElementById("chart-wait").dataset.node = body.node;
}

async function refreshWait() {
  const node = typeof state === "undefined" ? "" : state.node;
  if (node === live.waitNode && Date.now() - live.waitAt < LIVE.WAIT_MS) return;
  live.waitNode = node;
  live.waitAt = Date.now();
  try {
    renderWait(await api("/api/wait?node=" + encodeURIComponent(node)));
  } catch (err) { console.error("wait chart:", err); }
}

setInterval(refreshWait, 1000);
refreshWait();
