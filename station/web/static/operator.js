// Operator display: live state over SSE, status poll as a fallback, PIN dialog for actions.
// No framework and no build step: this file is served as-is by the daemon.
"use strict";

const T = {
  zh: { title: "测温核验", offline: "已断开", online: "在线", temperature: "体温 °C", code: "健康码", today: "今日",
        pass: "通过", deny: "拒绝", other: "复核", alarms: "告警", open_gate: "开闸一次", recheck: "水银/临床复测",
        operator: "操作员", clinical: "复测体温 °C", pin: "密码", cancel: "取消", confirm: "确认", ack: "确认告警",
        acked: "已确认", wait: "请上前测温", deny_fever: "体温异常 禁止通行", deny_code: "健康码异常 禁止通行",
        retry: "请重试", manual_check: "请人工核验", none: "未出示", invalid: "无效", ok_done: "已完成",
        pin_title_ack: "确认告警", pin_title_open: "开闸一次", pin_title_recheck: "临床体温复测", fever: "发热",
        green: "绿码", yellow: "黄码", red: "红码" },
  en: { title: "Screening", offline: "offline", online: "online", temperature: "Temperature °C", code: "Health code",
        today: "Today", pass: "Pass", deny: "Denied", other: "Check", alarms: "Alarms", open_gate: "Open gate once",
        recheck: "Clinical re-check", operator: "Operator", clinical: "Clinical °C", pin: "PIN", cancel: "Cancel",
        confirm: "Confirm", ack: "Acknowledge", acked: "acknowledged", wait: "Please step up", deny_fever: "FEVER — DENIED",
        deny_code: "CODE — DENIED", retry: "PLEASE RETRY", manual_check: "MANUAL CHECK", none: "none shown",
        invalid: "invalid", ok_done: "done", pin_title_ack: "Acknowledge alarm", pin_title_open: "Open the gate once",
        pin_title_recheck: "Clinical thermometer re-check", fever: "fever", green: "GREEN", yellow: "YELLOW", red: "RED" },
};
T.zh.pass_big = "通过"; T.en.pass_big = "PASS";
// The operator-assisted check (a person without a smartphone): reasons and decisions from /api/status.
Object.assign(T.zh, { staff_check: "人工核验", pin_title_staff: "人工核验（无智能手机）", staff_reason: "核验依据",
  staff_decision: "核验结果", id_checked: "已人工核对身份证", paper_certificate: "纸质证明", escorted: "工作人员陪同",
  source_staff: "工作人员核验", choose_reason: "请选择核验依据" });
Object.assign(T.en, { staff_check: "Checked by staff", pin_title_staff: "Checked by staff (no smartphone)",
  staff_reason: "Reason", staff_decision: "Decision", id_checked: "ID checked by hand", paper_certificate: "Paper certificate",
  escorted: "Escorted", source_staff: "decided by staff", choose_reason: "Choose a reason" });
// The data directory refusing writes: decisions are held in memory and the gate acts on none of them.
Object.assign(T.zh, { storage_read_only: "存储卡只读", storage_full: "存储空间已满", storage_file_too_large: "存储文件超限",
  storage_io_error: "存储卡故障", storage_held: "条记录暂存内存，闸门不放行，请人工核验" });
Object.assign(T.en, { storage_read_only: "STORAGE READ-ONLY", storage_full: "STORAGE FULL", storage_file_too_large: "STORAGE FILE LIMIT",
  storage_io_error: "STORAGE FAULT", storage_held: "decisions held in memory; the gate stays closed, check by hand" });
// Outsider vehicle registration (外来车辆登记): reasons from /api/status, the plate pre-filled from the lane.
Object.assign(T.zh, { outsider_vehicle: "外来车辆", register: "登记", pin_title_register: "外来车辆登记", plate: "车牌",
  reg_reason: "来访事由", destination: "目的地", phone: "联系电话", visit: "探亲访友", delivery: "送货", work: "施工维修",
  official: "公务", pickup: "接送", registered: "已登记" });
Object.assign(T.en, { outsider_vehicle: "Outsider vehicle", register: "Register", pin_title_register: "Register an outsider vehicle",
  plate: "Plate", reg_reason: "Reason", destination: "Destination", phone: "Contact phone", visit: "Visit", delivery: "Delivery",
  work: "Building / repair work", official: "Official business", pickup: "Pick-up / drop-off", registered: "registered" });
T.zh.crop_face = "面部"; T.en.crop_face = "face"; T.zh.crop_thermal = "热像"; T.en.crop_thermal = "thermal";
// Every value from the server reaches the page through textContent / createElement, never as markup.
const COLOURS = new Set(["green", "yellow", "red"]);
const CLASS = { pass: "state-pass", deny_fever: "state-deny", deny_code: "state-deny", retry: "state-retry", manual_check: "state-retry" };

let lang = localStorage.getItem("operator-lang") || null;
let status = null;
let last = null;
let alarms = [];
const cropImgs = new Map();  // "<event_id>/<kind>" → its <img>, kept across redraws so it is fetched once
let es = null;
let audio = null;
const $ = (id) => document.getElementById(id);
const t = (k) => (T[lang] && Object.prototype.hasOwnProperty.call(T[lang], k) ? T[lang][k] : String(k ?? ""));

function applyLang() {
  document.documentElement.lang = lang;
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  $("lang").textContent = lang === "zh" ? "EN" : "中文";
  renderDecision(); renderAlarms(); renderPrompt(); if (status) renderStorage();
}

let online = null;
function setConn(ok) {
  // A multipart stream that ended (daemon restarted) keeps its last picture without an error
  // event: restart the live picture whenever the connection comes back.
  if (ok && online === false) startLive();
  online = ok;
  const el = $("conn");
  el.className = "conn " + (ok ? "online" : "offline");
  el.dataset.i18n = ok ? "online" : "offline";
  el.textContent = t(el.dataset.i18n);
}

function fmtTemp(v) { return v === null || v === undefined ? "--.-" : Number(v).toFixed(1); }
function fmtTime(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour12: false }) : ""; }

function renderDecision() {
  const d = last;
  document.body.classList.remove("state-idle", "state-pass", "state-deny", "state-retry");
  document.body.classList.add(d ? CLASS[d.decision] || "state-retry" : "state-idle");
  document.body.dataset.decision = d ? d.decision : "";
  $("decision").textContent = d ? (d.decision === "pass" ? t("pass_big") : t(d.decision)) : t("wait");
  // The reason in words for the public (the page's language, the other one below); the code for staff.
  renderWords($("reason"), $("reason-alt"), d && d.words);
  $("reason-code").textContent = d ? `${d.reason} · ${fmtTime(d.ts)}` : "";
  renderSource(d);
  const temp = $("temp");
  temp.textContent = fmtTemp(d && d.temperature_c);
  const fever = status && d && d.temperature_c !== null && d.temperature_c >= status.ui.fever_threshold_c;
  temp.classList.toggle("fever", !!fever);
  const code = $("code");
  const colour = d && d.code_colour;
  code.className = "code " + (COLOURS.has(colour) ? colour : "");  // only our own class names
  code.textContent = COLOURS.has(colour) ? t(colour) : d ? t(d.code_status === "invalid" ? "invalid" : "none") : "—";
}

function renderSource(d) {
  // Who decided, when it was not the station itself (the operator-assisted check).
  const el = $("source");
  const staff = !!d && d.decision_source === "staff";
  el.hidden = !staff;
  el.textContent = staff ? t("source_staff") : "";
}

function renderWords(main, alt, words) {
  // words: {key, zh, en} from the server (station/domain/prompts.py); shown as text, never markup.
  const other = lang === "zh" ? "en" : "zh";
  main.textContent = words && typeof words[lang] === "string" ? words[lang] : "";
  alt.textContent = words && typeof words[other] === "string" ? words[other] : "";
}

let registration = null;  // {outsider: {plate, ts, vehicle_id} | null, recent: [...]} on a vehicle lane, else null
function renderRegistration() {
  const r = registration;
  $("vehicles").hidden = !r;
  if (!r) return;
  const plate = r.outsider && typeof r.outsider.plate === "string" ? r.outsider.plate : "";
  $("outsider-plate").textContent = plate || "—";
  const ul = $("registration-list");
  ul.textContent = "";
  for (const x of r.recent || []) {
    const li = document.createElement("li");
    li.dataset.registrationId = x.registration_id;
    li.textContent = `${fmtTime(x.ts)} ${x.plate} · ${t(x.reason)} · ${x.destination} · ****${x.phone_last4}`;
    ul.appendChild(li);
  }
}

let prompt = null;  // the lane's next step: {state, prompt: {key, zh, en} | null}
function renderPrompt() {
  const p = prompt && prompt.state === "screening" ? prompt.prompt : null;
  $("prompt").hidden = !p;
  $("prompt").dataset.key = p && typeof p.key === "string" ? p.key : "";
  renderWords($("prompt-main"), $("prompt-alt"), p);
}

function renderCounts(c) {
  if (!c) return;
  $("c-total").textContent = c.total; $("c-pass").textContent = c.pass; $("c-deny").textContent = c.deny;
  $("c-other").textContent = c.retry + c.manual_check;
}

function cropImg(eventId, kind) {
  const key = `${eventId}/${kind}`;
  let img = cropImgs.get(key);
  if (!img) {
    img = document.createElement("img");
    img.className = kind === "thermal" ? "crop thermal" : "crop";
    img.setAttribute("data-testid", `crop-${kind === "thermal" ? "thermal" : "face"}`);
    img.src = `/api/crops/${encodeURIComponent(eventId)}/${encodeURIComponent(kind)}`;
    cropImgs.set(key, img);
  }
  img.alt = t(kind === "thermal" ? "crop_thermal" : "crop_face");
  return img;
}

function renderAlarms() {
  const ul = $("alarm-list");
  const shown = new Set(alarms.map((a) => a.event_id));
  for (const key of [...cropImgs.keys()]) if (!shown.has(key.split("/")[0])) cropImgs.delete(key);
  ul.textContent = "";
  let open = 0;
  for (const a of alarms) {
    const li = document.createElement("li");
    li.dataset.eventId = a.event_id;
    li.className = a.ack ? "acked" : "open";
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = `${fmtTime(a.ts)} ${t(a.decision)} ${fmtTemp(a.temperature_c)} °C`;
    for (const kind of a.crops || []) li.appendChild(cropImg(a.event_id, kind));  // who it was: face, thermal
    li.appendChild(what);
    if (a.ack) {
      const who = document.createElement("span");
      who.textContent = `${t("acked")}: ${a.ack.operator} ${fmtTime(a.ack.ts)}`;
      li.appendChild(who);
    } else {
      open += 1;
      const b = document.createElement("button");
      b.textContent = t("ack");
      b.dataset.testid = "ack";
      b.setAttribute("data-testid", "ack");
      b.onclick = () => askPin("ack", { event_id: a.event_id });
      li.appendChild(b);
    }
    ul.appendChild(li);
  }
  const badge = $("unacked");
  badge.textContent = open;
  badge.classList.toggle("zero", open === 0);
}

function applyStatus(s) {
  status = s;
  if (!lang) { lang = s.ui.language; applyLang(); }
  $("station-name").textContent = `${s.station.site} / ${s.station.id}`;
  if (s.last_decision && (!last || s.last_decision.event_id !== last.event_id)) last = s.last_decision;
  alarms = s.alarms || [];
  if (s.prompt !== undefined) prompt = s.prompt;
  if (s.registration !== undefined) { registration = s.registration; renderRegistration(); }
  renderPrompt();
  renderCounts(s.counts); renderDecision(); renderAlarms(); renderStorage();
}

function renderStorage() {
  const el = $("storage-alarm");
  const st = status && status.devices && status.devices.storage;
  const bad = !!st && st.state !== "ok";
  el.hidden = !bad;
  document.body.classList.toggle("storage-fault", bad);
  if (bad) el.textContent = `${t("storage_" + st.state)} · ${Number(st.held) || 0} ${t("storage_held")}`;
}

// -- sound: WebAudio tones, no files --------------------------------------------------------------
function beep(pattern) {
  try {
    audio = audio || new (window.AudioContext || window.webkitAudioContext)();
    let at = audio.currentTime;
    for (const [freq, dur] of pattern) {
      const o = audio.createOscillator(), g = audio.createGain();
      o.frequency.value = freq; o.type = "square"; g.gain.value = 0.15;
      o.connect(g); g.connect(audio.destination);
      o.start(at); o.stop(at + dur); at += dur + 0.08;
    }
  } catch (e) { /* no audio device: the colours still tell */ }
}
const SOUND = { pass: [[1320, 0.12]], deny_fever: [[440, 0.25], [440, 0.25], [440, 0.25]],
                deny_code: [[440, 0.25], [440, 0.25]], retry: [[880, 0.15], [660, 0.15]], manual_check: [[880, 0.15], [660, 0.15]] };

// -- live updates -----------------------------------------------------------------------------------
function connect() {
  if (es) es.close();
  es = new EventSource("/api/events/stream");   // the browser reconnects by itself (retry: from the server)
  es.onopen = () => setConn(true);
  es.onerror = () => setConn(false);
  es.addEventListener("status", (ev) => { setConn(true); applyStatus(JSON.parse(ev.data)); });
  es.addEventListener("decision", (ev) => {
    last = JSON.parse(ev.data);
    renderDecision();
    beep(SOUND[last.decision] || SOUND.retry);
    refresh();
  });
  es.addEventListener("registration", () => refresh());
  es.addEventListener("prompt", (ev) => { prompt = JSON.parse(ev.data); renderPrompt(); });
  es.addEventListener("alarm", (ev) => {
    const a = JSON.parse(ev.data);
    if (!alarms.some((x) => x.event_id === a.event_id)) alarms.unshift(a);
    renderAlarms();
  });
  es.addEventListener("ack", (ev) => {
    const a = JSON.parse(ev.data);
    for (const x of alarms) if (x.event_id === a.event_id && !x.ack) x.ack = { operator: a.operator, ts: a.ts };
    renderAlarms();
  });
}

async function refresh() {
  try {
    const r = await fetch("/api/status", { cache: "no-store" });
    if (!r.ok) throw new Error(r.status);
    applyStatus(await r.json());
    setConn(true);
    // EventSource gives up for good on some errors (e.g. a 502 from a proxy): start it again.
    if (!es || es.readyState === EventSource.CLOSED) connect();
  } catch (e) { setConn(false); }
}

function startLive() {
  const img = $("live");
  img.onerror = () => setTimeout(() => { img.src = "/api/live.mjpeg?t=" + Date.now(); }, 2000);
  img.src = "/api/live.mjpeg?t=" + Date.now();
}

// -- PIN dialog and actions ---------------------------------------------------------------------------
let pending = null;
function toast(text, kind) {
  const el = $("toast");
  el.textContent = text; el.className = "toast " + (kind || ""); el.hidden = false;
  clearTimeout(el._timer); el._timer = setTimeout(() => { el.hidden = true; }, 3000);
}

function askPin(action, args) {
  pending = { action, args };
  $("pin-title").textContent = t({ ack: "pin_title_ack", open_gate: "pin_title_open", recheck: "pin_title_recheck",
                                   staff_check: "pin_title_staff", register: "pin_title_register" }[action]);
  $("clinical-row").hidden = action !== "recheck";
  $("staff-row").hidden = action !== "staff_check";
  if (action === "staff_check") buildStaffChoices();
  $("reg-row").hidden = action !== "register";
  if (action === "register") buildRegistrationForm();
  $("pin-value").value = ""; $("pin-clinical").value = ""; $("pin-error").textContent = "";
  $("pin-operator").value = localStorage.getItem("operator-name") || "";
  $("pin-dialog").showModal();
  $("pin-value").focus();
}

async function submitPin() {
  const { action, args } = pending;
  const operator = $("pin-operator").value.trim();
  const body = { operator, pin: $("pin-value").value, ...args };
  let url;
  if (action === "ack") url = `/api/alarms/${encodeURIComponent(args.event_id)}/ack`;
  else if (action === "open_gate") url = "/api/override/open-gate";
  else if (action === "recheck") { url = "/api/override/recheck"; body.clinical_c = parseFloat($("pin-clinical").value); }
  else if (action === "register") {
    if (!args.reason) { $("pin-error").textContent = t("choose_reason"); return; }
    url = "/api/registrations";
    body.plate = $("reg-plate").value; body.destination = $("reg-destination").value; body.phone = $("reg-phone").value;
  }
  else {
    if (!args.reason) { $("pin-error").textContent = t("choose_reason"); return; }
    url = "/api/override/staff-check";
  }
  let r, out;
  try {
    r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    out = await r.json();
  } catch (e) { $("pin-error").textContent = t("offline"); return; }
  if (!r.ok) { $("pin-error").textContent = out.error || out.reason; $("pin-value").value = ""; return; }
  localStorage.setItem("operator-name", operator);
  $("pin-dialog").close();
  toast(t("ok_done"), "good");
  refresh();
}

function buildStaffChoices() {
  // One button per reason and per decision the station allows; the chosen one goes into pending.args.
  const ui = (status && status.ui) || {};
  const groups = [["staff-reasons", "reason", ui.staff_check_reasons || [], null],
                  ["staff-decisions", "decision", ui.staff_check_decisions || ["pass"], "pass"]];
  for (const [id, key, values, initial] of groups) {
    const box = $(id);
    box.textContent = "";
    pending.args[key] = initial;
    for (const v of values) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = v === "pass" ? t("pass") : t(v);
      b.setAttribute("data-testid", `staff-${key}-${v}`);
      b.classList.toggle("chosen", v === initial);
      b.onclick = () => {
        pending.args[key] = v;
        for (const x of box.children) x.classList.toggle("chosen", x === b);
      };
      box.appendChild(b);
    }
  }
}

function buildRegistrationForm() {
  // The plate the lane just read, editable (the server checks it); one button per reason the station allows.
  const r = registration || {};
  $("reg-plate").value = r.outsider && typeof r.outsider.plate === "string" ? r.outsider.plate : "";
  $("reg-destination").value = ""; $("reg-phone").value = "";
  const box = $("reg-reasons");
  box.textContent = "";
  pending.args.reason = null;
  for (const v of (status && status.ui && status.ui.registration_reasons) || []) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = t(v);
    b.setAttribute("data-testid", `reg-reason-${v}`);
    b.onclick = () => { pending.args.reason = v; for (const x of box.children) x.classList.toggle("chosen", x === b); };
    box.appendChild(b);
  }
}

function buildKeypad() {
  // The keypad types into the phone number while it has the focus, else into the PIN; its buttons
  // never take the focus themselves (mousedown), so a tap keeps typing where the operator is.
  const pad = $("keypad");
  for (const k of ["1", "2", "3", "4", "5", "6", "7", "8", "9", "⌫", "0", "C"]) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = k;
    b.addEventListener("mousedown", (e) => e.preventDefault());
    b.onclick = () => {
      const input = document.activeElement === $("reg-phone") ? $("reg-phone") : $("pin-value");
      if (k === "⌫") input.value = input.value.slice(0, -1);
      else if (k === "C") input.value = "";
      else if (input.value.length < (input === $("pin-value") ? 12 : 20)) input.value += k;
    };
    pad.appendChild(b);
  }
}

function init() {
  buildKeypad();
  $("lang").onclick = () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("operator-lang", lang); applyLang(); };
  $("btn-open").onclick = () => askPin("open_gate", {});
  $("btn-recheck").onclick = () => askPin("recheck", { event_id: last ? last.event_id : "" });
  $("btn-staff").onclick = () => askPin("staff_check", {});
  $("btn-register").onclick = () => askPin("register", {});
  $("pin-cancel").onclick = () => $("pin-dialog").close();
  $("pin-form").onsubmit = (ev) => { ev.preventDefault(); submitPin(); };
  setInterval(() => { $("clock").textContent = new Date().toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour12: false }); }, 1000);
  if (lang) applyLang();
  refresh();
  connect();
  startLive();
  setInterval(refresh, 5000);   // counts and the connection state, even if the event stream is down
}
init();
