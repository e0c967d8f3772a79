// The review page's script: vad.review.page inlines it into RUN/review.html (templates/review.html). It reads the
// page's data block (script#review-data); served (http:), it reads and posts verdicts at /api/feedback.
"use strict";
const D = JSON.parse(document.getElementById("review-data").textContent);
const served = location.protocol === "http:";
const video = document.getElementById("video");
const $ = (id) => document.getElementById(id);
const byId = new Map(D.events.map((e, i) => [e.id, Object.assign(e, {order: i})]));
const cards = [...document.querySelectorAll(".card")];
const cardOf = new Map(cards.map((c) => [c.dataset.event, c]));
const verdicts = {};
let current = null, selected = null;

function toast(msg) {
  const t = $("toast"); t.textContent = msg; t.style.display = "block";
  clearTimeout(toast.timer); toast.timer = setTimeout(() => { t.style.display = "none"; }, 5000);
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
function load(clip, then) {
  current = clip;
  document.querySelectorAll(".tl").forEach((tl) => tl.classList.toggle("cur", tl.dataset.clip === clip));
  const c = D.clips[clip];
  const urls = [c.video, served && c.source_video ? "/source/" + encodeURIComponent(clip) : c.source];
  let i = 0;
  $("vnote").textContent = "";
  const next = () => {
    while (i < urls.length && !urls[i]) i++;
    if (i >= urls.length) { $("vnote").textContent = "no playable video of " + clip + ": " + D.no_video_note; return; }
    video.src = urls[i++]; video.load();
  };
  video.onerror = next;
  video.onloadedmetadata = () => { video.onerror = null; then(); };
  next();
}
function play(clip, frame, pre) {
  const go = () => {
    video.currentTime = Math.max(0, secs(clip, frame) - pre);
    const p = video.play(); if (p) p.catch(() => {});
  };
  if (current === clip && video.readyState >= 1) go(); else load(clip, go);
}
function select(id, go) {
  selected = id;
  cards.forEach((c) => c.classList.toggle("sel", c.dataset.event === id));
  document.querySelectorAll(".ev").forEach((r) => r.classList.toggle("sel", r.dataset.id === id));
  const card = cardOf.get(id); if (card) card.scrollIntoView({block: "nearest"});
  const e = byId.get(id); if (go && e) play(e.clip, e.start, D.preroll);
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
    const r = await fetch("/api/feedback", {method: "POST", headers: {"Content-Type": "application/json"},
                                            body: JSON.stringify({event: id, verdict: verdict})});
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    verdicts[id] = body; paint(id); toast(id + ": " + verdict); view();
  } catch (err) { toast("verdict not recorded: " + err.message); }
}
async function loadVerdicts() {
  try {
    const r = await fetch("/api/feedback"), body = await r.json();
    Object.assign(verdicts, body.verdicts); Object.keys(verdicts).forEach(paint); view();
    if (body.unreadable_lines.length) toast("feedback.jsonl: unreadable line(s) " + body.unreadable_lines.join(", "));
  } catch (err) { toast("could not read the verdicts: " + err.message); }
}
function view() {
  const by = $("sort").value, clip = $("fclip").value, verdict = $("fverdict").value;
  const min = parseFloat($("fscore").value);
  const peak = (c) => byId.get(c.dataset.event).peak, order = (c) => byId.get(c.dataset.event).order;
  const sorted = cards.slice().sort(by === "score" ? (a, b) => peak(b) - peak(a) : (a, b) => order(a) - order(b));
  let shown = 0;
  for (const c of sorted) {
    const v = verdicts[c.dataset.event], said = v ? v.verdict : "none";
    const ok = (!clip || c.dataset.clip === clip) && (isNaN(min) || peak(c) >= min) && (!verdict || said === verdict);
    c.style.display = ok ? "" : "none"; shown += ok; $("cards").append(c);
  }
  $("count").textContent = shown + " of " + cards.length + " events";
}

const mode = $("mode");
mode.textContent = served ? "Verdicts are recorded to feedback.jsonl: n / a, or a card's buttons." : D.static_note;
if (served) mode.className = "live";
cards.forEach((c) => {
  c.addEventListener("click", (ev) => {
    const b = ev.target.closest("button");
    select(c.dataset.event, !b);
    if (b) mark(c.dataset.event, b.dataset.verdict);
  });
  if (!served) c.querySelectorAll("button").forEach((b) => { b.disabled = true; b.title = D.static_note; });
});
document.querySelectorAll(".tl").forEach((tl) => {
  const clip = tl.dataset.clip, svg = tl.querySelector("svg");
  svg.addEventListener("click", (ev) => {
    const box = svg.getBoundingClientRect(), f = Math.floor((ev.clientX - box.left) / box.width * D.clips[clip].frames);
    const hit = D.events.find((e) => e.clip === clip && f >= e.start && f <= e.end);
    if (hit) select(hit.id, true); else play(clip, f, 0);
  });
});
video.addEventListener("timeupdate", () => {
  if (!current) return;
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
["sort", "fclip", "fscore", "fverdict"].forEach((id) => $(id).addEventListener("input", view));
view();
if (served) loadVerdicts();
