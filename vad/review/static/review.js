// The review page's script, for a run's page (RUN/review.html, vad.review.page) and a site's control room (vad serve's
// page at /, D.live): one set of cards, filters, keys and verdicts. It reads the page's data block
// (script#review-data); served (http:, https:), it reads and posts verdicts at /api/feedback. Live, it also draws the
// cameras' grid (/api/cameras, each camera's latest frame once a second) and keeps the event cards current from
// /api/feed and the server's event stream (/api/stream).
"use strict";
const D = JSON.parse(document.getElementById("review-data").textContent);
const served = location.protocol === "http:" || location.protocol === "https:";
const live = !!D.live;
const video = document.getElementById("video");
const $ = (id) => document.getElementById(id);
const byId = new Map((D.events || []).map((e, i) => [e.id, Object.assign(e, {order: i})]));
const cards = [...document.querySelectorAll(".card")];
const cardOf = new Map(cards.map((c) => [c.dataset.event, c]));
const verdicts = {};
let current = null, selected = null, waiting = null;

function toast(msg) {
  const t = $("toast"); t.textContent = msg; t.style.display = "block";
  clearTimeout(toast.timer); toast.timer = setTimeout(() => { t.style.display = "none"; }, 5000);
}
async function api(path, options) {
  const r = await fetch(path, options);
  if (r.status === 401 && live) { location.href = "/login"; throw new Error("logged out"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
// Frames <-> seconds of the video playing: its duration spans the clip's frames (a rendered video may run at
// another rate than its source).
function secs(clip, f) {
  const c = D.clips[clip], d = video.duration;
  return isFinite(d) && d > 0 ? f * d / c.frames : f / (c.fps || 25);
}
function frameAt(clip, t) {
  const c = D.clips[clip], d = video.duration;
  return isFinite(d) && d > 0 ? t / d * c.frames : t * (c.fps || 25);
}
// Play the first of ``urls`` that loads, from ``at(video)`` seconds.
function playFrom(key, urls, at, missing) {
  const go = () => {
    video.currentTime = Math.max(0, at());
    const p = video.play(); if (p) p.catch(() => {});
  };
  if (current === key && video.readyState >= 1) { go(); return; }
  current = key;
  document.querySelectorAll(".tl").forEach((tl) => tl.classList.toggle("cur", tl.dataset.clip === key));
  let i = 0;
  $("vnote").textContent = "";
  const next = () => {
    while (i < urls.length && !urls[i]) i++;
    if (i >= urls.length) { $("vnote").textContent = missing; return; }
    video.src = urls[i++]; video.load();
  };
  video.onerror = next;
  video.onloadedmetadata = () => { video.onerror = null; go(); };
  next();
}
function play(clip, frame, pre) {
  const c = D.clips[clip];
  const urls = [c.video, served && c.source_video ? "/source/" + encodeURIComponent(clip) : c.source];
  playFrom(clip, urls, () => secs(clip, frame) - pre, "no playable video of " + clip + ": " + D.no_video_note);
}
function playEvent(e) {
  if (!live) { play(e.clip, e.start, D.preroll); return; }
  waiting = null;
  if (!e.clip_ready) {  // its clip is finished after its post-roll: played when the stream says it is written
    waiting = e.id; video.removeAttribute("src"); current = null;
    $("vnote").textContent = e.clip ? "the clip of " + e.id + " is being written (post-roll); it plays when done"
      : "no clip of " + e.id + (e.open ? " yet: the event is still open" : " (clips are off, or it was deleted)");
    return;
  }
  playFrom(e.id, [e.clip], () => 0, "the clip of " + e.id + " could not be played");
}
function select(id, go) {
  selected = id;
  cards.forEach((c) => c.classList.toggle("sel", c.dataset.event === id));
  document.querySelectorAll(".ev").forEach((r) => r.classList.toggle("sel", r.dataset.id === id));
  const card = cardOf.get(id); if (card) card.scrollIntoView({block: "nearest"});
  const e = byId.get(id); if (go && e) playEvent(e);
}
function visible() { return [...$("cards").children].filter((c) => c.style.display !== "none"); }
function step(d) {
  const vis = visible(); if (!vis.length) return;
  let i = vis.findIndex((c) => c.dataset.event === selected);
  i = i < 0 ? (d > 0 ? 0 : vis.length - 1) : Math.min(vis.length - 1, Math.max(0, i + d));
  select(vis[i].dataset.event, true);
}
function paint(id) {
  const card = cardOf.get(id), v = verdicts[id]; if (!card || !v) return;
  const span = card.querySelector(".v"); span.textContent = v.verdict + " (" + v.via + ", " + v.time + ")";
  span.className = "v " + v.verdict;
}
async function mark(id, verdict) {
  if (!id) { toast("select an event first: click a card, or press j"); return; }
  if (!served) { toast(D.static_note); return; }
  try {
    const body = await api("/api/feedback", {method: "POST", headers: {"Content-Type": "application/json"},
                                             body: JSON.stringify({event: id, verdict: verdict})});
    verdicts[id] = body; paint(id); toast(id + ": " + verdict); view();
  } catch (err) { toast("verdict not recorded: " + err.message); }
}
async function loadVerdicts() {
  try {
    const body = await api("/api/feedback");
    Object.assign(verdicts, body.verdicts); Object.keys(verdicts).forEach(paint); view();
    if (body.unreadable_lines.length) toast("feedback.jsonl: unreadable line(s) " + body.unreadable_lines.join(", "));
  } catch (err) { toast("could not read the verdicts: " + err.message); }
}
function day(e) {
  if (!e.start_time) return "";
  const t = new Date(e.start_time);
  return t.getFullYear() + "-" + String(t.getMonth() + 1).padStart(2, "0") + "-" + String(t.getDate()).padStart(2, "0");
}
function view() {
  const by = $("sort").value, clip = $("fclip").value, verdict = $("fverdict").value;
  const wanted = live ? $("fday").value : "";
  const min = parseFloat($("fscore").value);
  const peak = (c) => byId.get(c.dataset.event).peak, order = (c) => byId.get(c.dataset.event).order;
  const sorted = cards.slice().sort(by === "score" ? (a, b) => peak(b) - peak(a)
    : live ? (a, b) => order(b) - order(a) : (a, b) => order(a) - order(b));  // live: the newest first
  let shown = 0;
  for (const c of sorted) {
    const e = byId.get(c.dataset.event), v = verdicts[c.dataset.event], said = v ? v.verdict : "none";
    const ok = (!clip || c.dataset.clip === clip) && (isNaN(min) || e.peak >= min) && (!verdict || said === verdict)
      && (!wanted || day(e) === wanted);
    c.style.display = ok ? "" : "none"; shown += ok; $("cards").append(c);
  }
  $("count").textContent = shown + " of " + cards.length + " events";
}
function bindCard(c) {
  c.addEventListener("click", (ev) => {
    const b = ev.target.closest("button");
    select(c.dataset.event, !b);
    if (b) mark(c.dataset.event, b.dataset.verdict);
  });
  if (!served) c.querySelectorAll("button").forEach((b) => { b.disabled = true; b.title = D.static_note; });
}

// --- the control room: live events as cards, the cameras' grid ----------------------------------------------------
let seq = 0;
function when(e) {
  const t = e.start_time ? new Date(e.start_time).toLocaleString() : "?";
  const long = e.end_time ? Math.max(0, (new Date(e.end_time) - new Date(e.start_time)) / 1000).toFixed(1) + " s"
    : "ongoing";
  return e.camera + " · " + t + " · " + long;
}
function upsert(patch) {
  let e = byId.get(patch.id), fresh = !e;
  if (fresh) { e = {order: seq++, peak: -Infinity}; byId.set(patch.id, e); }
  const peak = Math.max(e.peak, patch.peak ?? -Infinity);
  Object.assign(e, patch, {peak: peak});
  let c = cardOf.get(e.id);
  if (!c) {
    c = $("card-template").content.firstElementChild.cloneNode(true);
    c.dataset.event = e.id; c.dataset.clip = e.camera;
    cards.push(c); cardOf.set(e.id, c); bindCard(c); $("cards").prepend(c);
    const img = c.querySelector("img");
    img.onerror = () => { if (!img.dataset.tries || img.dataset.tries < 10) {  // written a moment after the start
      img.dataset.tries = (+img.dataset.tries || 0) + 1; setTimeout(() => { img.src = thumb(e); }, 700); } };
    addDay(day(e));
  }
  c.dataset.peak = String(e.peak);
  c.classList.toggle("open", !!e.open);
  c.querySelector("h3").textContent = e.id;
  c.querySelector(".where").textContent = when(e);
  c.querySelector(".what").textContent = "peak " + e.peak.toPrecision(3) + " · " + (e.branch || "appearance")
    + (e.open ? " · open" : e.clip_ready ? " · clip ready" : "");
  const img = c.querySelector("img");
  if (e.snapshot && (fresh || patch.snapshot_changed)) img.src = thumb(e);
  if (!e.snapshot) img.alt = "no snapshot";
  paint(e.id);
  view();
  if (waiting === e.id && e.clip_ready) select(e.id, true);
}
function thumb(e) { return e.snapshot + "?v=" + Date.now(); }
function addDay(d) {
  if (!d || [...$("fday").options].some((o) => o.value === d)) return;
  const o = document.createElement("option"); o.value = o.textContent = d; $("fday").append(o);
}
function spark(points) {
  if (!points.length) return "";
  const now = Date.now() / 1000, hi = Math.max(2, ...points.map((p) => p[1]));
  return points.map((p) => (60 - (now - p[0])).toFixed(1) + "," + (20 - 20 * Math.max(0, p[1]) / hi).toFixed(2))
    .join(" ");
}
async function tiles() {
  let cams;
  try { cams = await api("/api/cameras?history=60"); } catch (err) { return; }
  for (const [name, s] of Object.entries(cams)) {
    let t = document.querySelector('.tile[data-camera="' + CSS.escape(name) + '"]');
    if (!t) {
      t = $("tile-template").content.firstElementChild.cloneNode(true);
      t.dataset.camera = name; t.querySelector(".name").textContent = name; $("grid").append(t);
      t.querySelector("img").alt = "latest frame of " + name;
      if (![...$("fclip").options].some((o) => o.value === name)) {
        const o = document.createElement("option"); o.value = o.textContent = name; $("fclip").append(o);
      }
    }
    t.dataset.state = s.state;
    t.classList.toggle("alarm", !!s.open_event);
    t.querySelector(".state").textContent = s.state + (s.open_event ? " · EVENT" : "");
    const hi = Math.max(2, ...(s.history || []).map((p) => p[1]));
    t.querySelector(".threshold").setAttribute("y1", 20 - 20 / hi); t.querySelector(".threshold").setAttribute("y2", 20 - 20 / hi);
    t.querySelector(".score").setAttribute("points", spark(s.history || []));
    t.querySelector(".rates").textContent = s.fps_scored.toFixed(1) + " frames/s scored · " + s.dropped + " dropped"
      + (s.score == null ? "" : " · score " + s.score.toFixed(2));
    if (s.frame_seq != null && t.dataset.seq !== String(s.frame_seq)) {  // a new frame: swap once it has loaded
      t.dataset.seq = String(s.frame_seq);
      const next = new Image();
      next.onload = () => { const img = t.querySelector("img"); img.src = next.src; t.classList.add("pic"); };
      next.src = "/api/cameras/" + encodeURIComponent(name) + "/frame.jpg?seq=" + s.frame_seq;
    }
  }
}
async function storage() {
  try {
    const s = await api("/api/storage");
    $("kept").textContent = "kept: " + s.text;
  } catch (err) { $("kept").textContent = ""; }
}
function stream() {
  const src = new EventSource("/api/stream");
  src.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.kind === "event") upsert(msg.item);
    else if (msg.kind === "written") {
      const e = byId.get(msg.id);
      if (e && msg.what === "clip") upsert({id: msg.id, clip_ready: true});
      if (e && msg.what === "snapshot") upsert({id: msg.id, snapshot_changed: true});
    } else if (msg.kind === "verdict") { verdicts[msg.id] = msg.line; paint(msg.id); view(); }
  };
  src.onerror = () => { $("mode").textContent = "reconnecting to the event stream..."; $("mode").className = ""; };
  src.onopen = () => { $("mode").textContent = "live: verdicts go to each camera's run (n / a, or a card's buttons)";
    $("mode").className = "live"; };
}
async function startLive() {
  if (D.user) { $("logout").hidden = false; $("logout").title = "logged in as " + D.user; }
  $("logout").addEventListener("click", async () => {
    await fetch("/api/logout", {method: "POST"}); location.href = "/login";
  });
  stream();
  try {
    const feed = await api("/api/feed");
    feed.events.forEach(upsert);
  } catch (err) { toast("could not read the events: " + err.message); }
  await loadVerdicts();
  tiles(); setInterval(tiles, 1000);
  storage(); setInterval(storage, 60000);
}

// --- wiring -------------------------------------------------------------------------------------------------------
const mode = $("mode");
if (!live) {
  mode.textContent = served ? "Verdicts are recorded to feedback.jsonl: n / a, or a card's buttons." : D.static_note;
  if (served) mode.className = "live";
}
cards.forEach(bindCard);
document.querySelectorAll(".tl").forEach((tl) => {
  const clip = tl.dataset.clip, svg = tl.querySelector("svg");
  svg.addEventListener("click", (ev) => {
    const box = svg.getBoundingClientRect(), f = Math.floor((ev.clientX - box.left) / box.width * D.clips[clip].frames);
    const hit = D.events.find((e) => e.clip === clip && f >= e.start && f <= e.end);
    if (hit) select(hit.id, true); else play(clip, f, 0);
  });
});
video.addEventListener("timeupdate", () => {
  if (!current || live) return;
  const tl = document.querySelector(".tl.cur"); if (!tl) return;
  const x = String(1000 * frameAt(current, video.currentTime) / D.clips[current].frames);
  const cur = tl.querySelector(".cursor"); cur.setAttribute("x1", x); cur.setAttribute("x2", x);
});
document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey || /^(INPUT|SELECT|TEXTAREA)$/.test(ev.target.tagName)) return;
  if (ev.key === "j" || ev.key === "k") step(ev.key === "j" ? 1 : -1);
  else if (ev.key === " ") { if (!video.currentSrc) step(1); else if (video.paused) video.play().catch(() => {});
    else video.pause(); }
  else if (ev.key === "n" || ev.key === "a") mark(selected, ev.key === "n" ? "normal" : "anomaly");
  else return;
  ev.preventDefault();
});
["sort", "fclip", "fscore", "fverdict", "fday"].forEach((id) => { if ($(id)) $(id).addEventListener("input", view); });
view();
if (live) startLive(); else if (served) loadVerdicts();
