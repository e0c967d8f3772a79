"""The review page of a scored run, and an operator's verdicts on its events.

:func:`write_review` (called by the evaluate stage) writes ``RUN/review.html``: one self-contained file (inline CSS
and JS, no network) that opens from ``file://``. It shows a summary of the run, per clip a timeline (the score
against the threshold, the events, the ground truth), and the events as cards with a thumbnail of the peak frame
and its heatmap (``RUN/review/<event>.jpg``). A card or a timeline plays the clip from 2 s before the event: the
rendered video (``RUN/videos/<clip>.mp4``) when it loads, else the source video. The render stage runs after
evaluate, so the page does not decide at writing time; its script tries the rendered video first, each time.

Verdicts (``normal`` / ``anomaly``) go to ``RUN/feedback.jsonl``, one JSON line each (:func:`record_verdict`; the
last line of an event wins), from ``vad review`` (:class:`ReviewServer`: the page served on 127.0.0.1, where it
can POST) or from ``vad feedback``. Opened as a file, the page is read-only and says so.

Lines are appended, never rewritten: the file opened for append under a lock (a thread lock for the server's
threads, ``flock`` for other processes), flushed and fsync'd before the verdict is acknowledged. Rewriting the whole
file atomically would cost a copy per verdict and, across processes, lose one of two verdicts given at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import math
import mimetypes
import os
import re
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

import numpy as np

from vad.atomic import atomic_path, write_text
from vad.config import EvalConfig, PostprocessConfig, RenderConfig
from vad.errors import InputError, UsageError, VadError
from vad.metrics import label_events
from vad.postprocess import Event
from vad.reference import NormalReference
from vad.runs import ClipRecord, RunFolder, RunFolderError, read_manifest

VERDICTS = ("normal", "anomaly")
PRE_ROLL = 2.0  # seconds of video before an event when it plays
THUMB_WIDTH = 320
POINTS = 600  # a timeline's score curve: at most this many points (the maximum of each span of frames)


class Scored(Protocol):
    """What the page reads of a scored run: a :class:`vad.evaluate.ScoredRun` (not imported here: the evaluate
    stage imports this module)."""

    folder: RunFolder
    manifest: dict[str, ClipRecord]
    labels: dict[str, np.ndarray]
    thresholds: dict[str, float]
    normalisation: str

    def shown(self, clip: str) -> tuple[np.ndarray, float]: ...

    def fps(self, clip: str, default: float | None = None) -> float | None: ...

    def reference(self, clip: str) -> NormalReference: ...


def write_review(s: Scored, per_clip: dict[str, list[Event]], metrics: dict, post: PostprocessConfig,
                 ev: EvalConfig, render: RenderConfig | None = None) -> Path:
    """Write ``RUN/review.html`` and the events' thumbnails (``render``: the heatmap's colours; default the
    renderer's defaults) for the events ``per_clip`` (every clip of ``s``) and ``metrics`` (evaluate's); return
    the page's path."""
    folder = s.folder
    missing = write_thumbnails(s, per_clip, ev, render or RenderConfig())
    clips, cards, events, timelines = {}, [], [], []
    for name, record in s.manifest.items():
        scores, threshold = s.shown(name)
        fps = s.fps(name, ev.fps)
        timelines.append(_timeline(name, scores, threshold, s.labels.get(name), per_clip[name], fps))
        clips[name] = {"frames": record.frames, "fps": fps, "video": _href(folder, folder.video(name)),
                       "source": _href(folder, Path(record.path)) if record.kind == "video" else None,
                       "source_video": record.kind == "video"}
        for e in per_clip[name]:
            peak = float(scores[e.peak_frame])
            events.append({"id": e.id, "clip": name, "start": e.start, "end": e.end, "peak": peak})
            thumb = None if e.id in missing else _href(folder, folder.thumbnail(e.id))
            cards.append(_card(e, peak, fps, thumb, missing.get(e.id)))
    data = {"run": folder.root.name, "clips": clips, "events": events, "preroll": PRE_ROLL,
            "static_note": f"Read-only: this page was opened as a file, so verdicts cannot be recorded here. To mark "
                           f"events, serve it: vad review --run {folder.root}",
            "no_video_note": f"render it (vad render --run {folder.root} --clip CLIP), or keep its source video"}
    options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in s.manifest)
    parts = {"TITLE": html.escape(folder.root.name), "SUMMARY": _summary(s, per_clip, metrics, post, ev),
             "TIMELINES": "\n".join(timelines), "CLIPS": options, "CARDS": "\n".join(cards),
             "DATA": json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")}
    write_text(re.sub(r"__(TITLE|SUMMARY|TIMELINES|CLIPS|CARDS|DATA)__", lambda m: parts[m[1]], PAGE),
               folder.review_page)
    return folder.review_page


def _href(folder: RunFolder, path: Path) -> str:
    """A link from the page (in ``RUN``) to ``path``: relative, percent-encoded."""
    return quote(Path(os.path.relpath(Path(path).resolve(), folder.root.resolve())).as_posix())


def _seconds(x: float) -> str:
    if x < 60:
        return f"{x:.1f} s"
    if x < 3600:
        return f"{int(x // 60)}:{x % 60:04.1f}"
    return f"{int(x // 3600)}:{int(x % 3600 // 60):02d}:{x % 60:04.1f}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _summary(s: Scored, per_clip: dict[str, list[Event]], metrics: dict, post: PostprocessConfig,
             ev: EvalConfig) -> str:
    """The summary as ``<dt>``/``<dd>`` pairs."""
    frames = sum(r.frames for r in s.manifest.values())
    fps = {n: s.fps(n, ev.fps) for n in s.manifest}
    seconds = sum(s.manifest[n].frames / f for n, f in fps.items()) if all(fps.values()) else None
    found = sum(map(len, per_clip.values()))
    alarms = metrics.get("alarms", {})
    rows = [("clips", f"{len(s.manifest)} ({len(s.labels)} labelled)"), ("frames", f"{frames:,}"),
            ("footage", "n/a (frame rates unknown: set eval.fps)" if seconds is None else
             f"{seconds / 3600:.3g} h ({_seconds(seconds)})"),
            ("events", f"{found} ({metrics.get('event_rule', ev.rule)} rule)"),
            ("events per hour", _num(alarms.get("events_per_hour"), ".1f"))]
    if s.labels:
        rows += [("frame AUC micro", _num(metrics.get("frame_auc_micro"))),
                 ("frame AUC micro, raw scores", _num(metrics.get("frame_auc_micro_raw"))),
                 ("frame AUC macro", _num(metrics.get("frame_auc_macro"))),
                 ("normal frames inside events", _pct(alarms.get("normal_frames_in_events"))),
                 ("anomalous frames caught", _pct(alarms.get("anomalous_frames_caught"))),
                 ("false alarm events", str(alarms.get("false_alarm_events", "n/a")))]
    threshold = metrics.get("threshold", {})
    values = ", ".join(f"{k}: {v:.4g}" for k, v in threshold.get("values", s.thresholds).items())
    shown = "1.0 on the calibrated scores shown" if s.normalisation == "calibrated" else "in the model's units"
    rows += [("threshold", f"{values} ({shown})"), ("threshold from", threshold.get("rule", "n/a")),
             ("scores shown", f"smoothed (sigma {post.sigma})" + (", calibrated" if s.normalisation == "calibrated"
                                                                   else ""))]
    return "\n".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rows)


def _timeline(name: str, scores: np.ndarray, threshold: float, labels: np.ndarray | None, found: list[Event],
              fps: float | None) -> str:
    """One clip's timeline: an SVG of its score curve (the maximum of each span of frames), the threshold, the
    events and the ground truth, 1000 units wide over the clip's frames."""
    n = len(scores)
    step = max(1, math.ceil(n / POINTS))
    pooled = np.asarray([scores[i : i + step].max() for i in range(0, n, step)], np.float64)
    lo, hi = min(0.0, threshold, float(pooled.min())), max(threshold, float(pooled.max()))
    hi += 0.1 * (hi - lo) or 1.0
    x = lambda f: round(1000 * f / n, 2)  # noqa: E731
    y = lambda v: round(50 - 46 * (v - lo) / (hi - lo), 2)  # noqa: E731
    shapes = [f'<rect class="gt" x="{x(a)}" y="0" width="{max(x(b) - x(a), 1)}" height="56"/>'
              for a, b in (label_events(labels) if labels is not None else [])]
    for e in found:
        w = max(x(e.end + 1) - x(e.start), 2)
        shapes.append(f'<rect class="ev" data-id="{html.escape(e.id)}" x="{x(e.start)}" y="0" width="{w}" '
                      f'height="56"><title>{html.escape(e.id)}</title></rect>')
    points = " ".join(f"{x((i + 0.5) * step)},{y(v)}" for i, v in enumerate(pooled))
    length = f"{n} frames" + (f", {_seconds(n / fps)}" if fps else "")
    return (f'<div class="tl" data-clip="{html.escape(name)}"><div class="tlhead">{html.escape(name)} · {length}'
            f'</div><svg viewBox="0 0 1000 56" preserveAspectRatio="none" role="img" aria-label="scores of '
            f'{html.escape(name)}">{"".join(shapes)}<polyline class="score" points="{points}"/><line '
            f'class="threshold" x1="0" x2="1000" y1="{y(threshold)}" y2="{y(threshold)}"/><line class="cursor" '
            f'x1="0" x2="0" y1="0" y2="56"/></svg></div>')


def _card(e: Event, peak: float, fps: float | None, thumb: str | None, note: str | None) -> str:
    """An event's card: its thumbnail (or why there is none), when, how long, its peak score and branch."""
    frames = e.end - e.start + 1
    when = f"{_seconds(e.start_s)} (frame {e.start})" if e.start_s is not None else f"frame {e.start}"
    long = _seconds(frames / fps) if fps else f"{frames} frames"
    picture = (f'<img src="{thumb}" alt="peak frame of {html.escape(e.id)} with its heatmap" loading="lazy">'
               if thumb else f'<div class="nothumb">{html.escape(note or "no thumbnail")}</div>')
    return (f'<article class="card" data-event="{html.escape(e.id)}" data-clip="{html.escape(e.clip)}" '
            f'data-peak="{peak:.6g}" tabindex="0">{picture}<h3>{html.escape(e.id)}</h3>'
            f"<p>{html.escape(e.clip)} · {when} · {long}</p>"
            f"<p>peak {peak:.3g} at frame {e.peak_frame} · {html.escape(e.branch)}</p>"
            '<p>verdict: <span class="v">none yet</span></p>'
            '<button type="button" data-verdict="normal">normal (n)</button>'
            '<button type="button" data-verdict="anomaly">anomaly (a)</button></article>')


def write_thumbnails(s: Scored, per_clip: dict[str, list[Event]], ev: EvalConfig,
                     render: RenderConfig) -> dict[str, str]:
    """``RUN/review/<event>.jpg``: each event's peak frame with its heatmap (as the renderer draws it), about
    320 px wide; thumbnails of events no longer found are deleted. Returns, for the events left without one, why
    (their source is gone or cannot be decoded)."""
    from PIL import Image

    from vad.heatmap import heat_picture

    folder, missing, keep = s.folder, {}, set()
    for name, found in per_clip.items():
        if not found:
            continue
        record = s.manifest[name]
        try:
            frames = _peak_frames(record, sorted({e.peak_frame for e in found}))
        except (OSError, VadError) as err:
            why = ("no thumbnail: the source is gone" if not Path(record.path).exists() else
                   f"no thumbnail: the source cannot be decoded ({err})")
            missing.update({e.id: why for e in found})
            continue
        path = folder.maps(name)
        maps = np.load(path, mmap_mode="r") if path.is_file() else None
        maps = maps if maps is not None and len(maps) == record.frames else None
        scale = s.reference(name).heat_scale(ev.threshold_percentile, render.heat_range)
        for e in found:
            pic = Image.fromarray(heat_picture(frames[e.peak_frame], None if maps is None else maps[e.peak_frame],
                                               scale, render))
            pic = pic.resize((THUMB_WIDTH, max(1, round(pic.height * THUMB_WIDTH / pic.width))), Image.BILINEAR)
            with atomic_path(folder.thumbnail(e.id), ".jpg") as tmp:
                pic.save(tmp, format="JPEG", quality=85)
            keep.add(folder.thumbnail(e.id))
    for old in folder.thumbnails.glob("*.jpg") if folder.thumbnails.is_dir() else []:
        if old not in keep:
            old.unlink()
    return missing


def _peak_frames(record: ClipRecord, wanted: list[int]) -> dict[int, np.ndarray]:
    """``{frame: (H, W, 3) uint8}`` of the source of ``record``: a frame folder's files one by one, a video's in
    one pass from the first frame wanted to the last (a video decodes from its start whatever is asked)."""
    from vad.io.decode import as_clip, iter_frames

    clip = as_clip(Path(record.path))
    spans = [(k, k + 1) for k in wanted] if record.kind == "frames" else [(wanted[0], wanted[-1] + 1)]
    out = {}
    for a, b in spans:
        for first, batch in iter_frames(clip, start=a, stop=b, batch_size=16):
            out.update({first + i: f.permute(1, 2, 0).numpy() for i, f in enumerate(batch) if first + i in wanted})
    return out


# Verdicts ---------------------------------------------------------------------------------------------------------

_WRITING = threading.Lock()  # the server's threads; flock keeps other processes (vad feedback) out


def known_events(run: Path | str) -> dict[str, dict]:
    """``{event id: event}`` of ``RUN/events.json`` (the events evaluate found last)."""
    folder = RunFolder(run)
    path = folder.events_json
    if not path.is_file():
        raise RunFolderError(f"{path} not found: evaluate the run first (vad evaluate --run {run})")
    try:
        return {e["id"]: e for e in json.loads(path.read_text())}
    except (ValueError, TypeError, KeyError) as err:
        raise InputError(f"{path}: not an events file of this vad version ({err}); evaluate the run again") from None


def record_verdict(run: Path | str, event: str, verdict: str, via: str = "cli") -> dict:
    """Append an operator's ``verdict`` on ``event`` to ``RUN/feedback.jsonl`` (flushed and fsync'd before it
    returns); return the line written. An unknown event or verdict is a :class:`UsageError`."""
    if verdict not in VERDICTS:
        raise UsageError(f"verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
    known = known_events(run)
    if event not in known:
        some = ", ".join(list(known)[:5]) + (", ..." if len(known) > 5 else "")
        raise UsageError(f"unknown event {event!r} in {run}: " + (
            f"known events include {some} (see events.csv)" if known else "the run has no events"))
    e = known[event]
    line = {"event": event, "clip": e["clip"], "start": e["start"], "end": e["end"], "verdict": verdict,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"), "via": via}
    _append(RunFolder(run).feedback, json.dumps(line))
    return line


def _append(path: Path, text: str) -> None:
    """Append one line, durably: under the locks, after a newline if the last line was torn by a crash."""
    with _WRITING, path.open("a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        size = fh.seek(0, os.SEEK_END)
        torn = False
        if size:
            fh.seek(size - 1)
            torn = fh.read(1) != b"\n"
        fh.write((b"\n" if torn else b"") + text.encode() + b"\n")  # append mode: at the end, wherever we read
        fh.flush()
        os.fsync(fh.fileno())
    if size == 0:  # a new file: its directory entry too
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_verdicts(run: Path | str) -> tuple[dict[str, dict], list[int]]:
    """``({event id: its last verdict line}, numbers of the lines that are not verdicts)`` of ``RUN/feedback.jsonl``
    (none yet: empty)."""
    path = RunFolder(run).feedback
    verdicts, bad = {}, []
    if not path.is_file():
        return verdicts, bad
    for i, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            if line["verdict"] not in VERDICTS:
                raise ValueError(line["verdict"])
            verdicts[str(line["event"])] = line
        except (ValueError, TypeError, KeyError):
            bad.append(i)
    return verdicts, bad


# The server -------------------------------------------------------------------------------------------------------


class ReviewServer(ThreadingHTTPServer):
    """``RUN/review.html`` served on 127.0.0.1 (never another address): the run's files, the sources of its scored
    clips (``/source/<clip>``) and ``/api/feedback`` (GET: the verdicts so far; POST ``{"event", "verdict"}``:
    record one). Requests must name this server as their Host, and a POST must come from its own page (its
    Origin): another site open in the browser can neither read the run nor give verdicts."""

    daemon_threads = True

    def __init__(self, run: Path | str, port: int = 0) -> None:
        self.folder = RunFolder(run)
        super().__init__(("127.0.0.1", port), _Handler)
        self.port = self.server_address[1]
        self.hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self.origins = {f"http://{h}" for h in self.hosts}
        self.url = f"http://127.0.0.1:{self.port}/"


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "vad-review"

    def log_message(self, *args) -> None:  # quiet: verdicts print their own line
        pass

    def _trusted(self, post: bool) -> bool:
        origin = self.headers.get("Origin")
        if self.headers.get("Host") in self.server.hosts and (origin in self.server.origins or
                                                               (origin is None and not post)):
            return True
        self._json(403, {"error": f"refused: only pages of {self.server.url} may ask this server"})
        return False

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._trusted(post=False):
            return
        path = unquote(urlsplit(self.path).path)
        folder = self.server.folder
        if path == "/api/feedback":
            verdicts, bad = read_verdicts(folder.root)
            self._json(200, {"verdicts": verdicts, "unreadable_lines": bad})
            return
        if path == "/":
            target = folder.review_page
        elif path.startswith("/source/"):
            record = read_manifest(folder, parts=False).get(path.removeprefix("/source/"))
            target = Path(record.path) if record is not None and record.kind == "video" else None
        else:
            target = _inside(folder.root, path)
        if target is None or not target.is_file():
            self._json(404, {"error": f"not found: {path}"})
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the browser stopped reading (a seek)
            self._send_file(target)

    def _send_file(self, path: Path) -> None:
        """``path``, or the byte range the request asks (video seeking needs ranges)."""
        size = path.stat().st_size
        start, end = 0, size - 1
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if m and (m[1] or m[2]):
            start, end = (int(m[1]), min(int(m[2] or end), end)) if m[1] else (max(0, size - int(m[2])), end)
            if start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return
        self.send_response(206 if m and (m[1] or m[2]) else 200)
        self.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-store")
        if m and (m[1] or m[2]):
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with path.open("rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := fh.read(min(1 << 16, left))):
                self.wfile.write(chunk)
                left -= len(chunk)

    def do_POST(self) -> None:
        if not self._trusted(post=True):
            return
        if urlsplit(self.path).path != "/api/feedback":
            self._json(404, {"error": f"not found: {self.path}"})
            return
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self._json(415, {"error": "expected a JSON body (Content-Type: application/json)"})
            return
        try:
            body = json.loads(self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 14)))
            line = record_verdict(self.server.folder.root, str(body["event"]), str(body["verdict"]), via="review")
        except OSError as err:  # the verdict is not on disk: say so
            self._json(500, {"error": f"{RunFolder(self.server.folder.root).feedback}: {err.strerror or err}"})
            return
        except (ValueError, TypeError, KeyError) as err:
            status = 404 if isinstance(err, UsageError) and "unknown event" in str(err) else 400
            self._json(status, {"error": str(err) if isinstance(err, VadError) else
                                f"expected {{\"event\": ID, \"verdict\": \"normal\"|\"anomaly\"}} ({err!r})"})
            return
        print(f"verdict: {line['event']} {line['verdict']}", flush=True)
        self._json(200, line)


def _inside(root: Path, path: str) -> Path | None:
    """The file under ``root`` that URL path ``path`` names; ``None`` for a hidden name or one outside ``root``."""
    parts = PurePosixPath(path).parts[1:]
    if not parts or any(p.startswith(".") for p in parts):
        return None
    target = root.joinpath(*parts).resolve()
    return target if target.is_relative_to(root.resolve()) else None


def serve(run: Path | str, port: int = 8765, open_browser: bool = False) -> None:
    """Serve the review page of ``run`` on 127.0.0.1:``port`` (0: any free port) until interrupted."""
    folder = RunFolder(run)
    if not folder.review_page.is_file():
        raise RunFolderError(f"{folder.review_page} not found: evaluate the run first (vad evaluate --run {run})")
    try:
        server = ReviewServer(run, port)
    except OSError as err:
        raise UsageError(f"cannot listen on 127.0.0.1:{port} ({err.strerror or err}); choose another --port (0: any "
                         "free port)") from None
    print(f"review page of {folder.root}: {server.url} (127.0.0.1 only); verdicts go to {folder.feedback}. "
          "Ctrl-C stops.", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>vad review: __TITLE__</title>
<style>
body{margin:0;font:14px/1.4 system-ui,sans-serif;background:#16181d;color:#e4e4e7}
header{padding:10px 20px;background:#1f2229;border-bottom:1px solid #333}
h1{font-size:18px;margin:0 0 4px}h2{font-size:15px;margin:14px 0 6px}
#mode{margin:0;color:#fbbf24}#mode.live{color:#4ade80}
main{display:grid;grid-template-columns:minmax(0,1fr) minmax(320px,42%);gap:18px;padding:0 20px 20px}
aside{position:sticky;top:0;align-self:start;padding-top:10px;max-height:100vh;overflow:auto}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}dt{color:#a1a1aa}dd{margin:0}
video{width:100%;max-height:48vh;background:#000;display:block}#vnote{color:#f87171;min-height:1.2em}
.keys{color:#a1a1aa;font-size:12px;margin:2px 0}
.tl{margin:0 0 6px}.tlhead{font-size:12px;color:#a1a1aa}.tl.cur .tlhead{color:#7dd3fc}
.tl svg{width:100%;height:56px;background:#0e1013;cursor:pointer;display:block}
.gt{fill:#facc15;fill-opacity:.25}.ev{fill:#ef4444;fill-opacity:.3}.ev.sel{fill-opacity:.65}
.score{fill:none;stroke:#7dd3fc;stroke-width:1.5;vector-effect:non-scaling-stroke}
.threshold{stroke:#f87171;stroke-dasharray:6 4;vector-effect:non-scaling-stroke}
.cursor{stroke:#fff;stroke-width:1.5;vector-effect:non-scaling-stroke;visibility:hidden}
.tl.cur .cursor{visibility:visible}
#bar{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin:6px 0 10px}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:10px}
.card{background:#1f2229;border:2px solid transparent;border-radius:6px;padding:6px;cursor:pointer}
.card.sel{border-color:#7dd3fc}.card img{width:100%;display:block;border-radius:3px}
.nothumb{min-height:80px;display:flex;align-items:center;justify-content:center;text-align:center;font-size:12px;
color:#a1a1aa;background:#0e1013;padding:4px}
.card h3{font-size:13px;margin:4px 0;word-break:break-all}.card p{margin:0;font-size:12px;color:#c4c4cc}
.v{font-weight:600}.v.normal{color:#4ade80}.v.anomaly{color:#f87171}.card button{margin:4px 4px 0 0}
#toast{position:fixed;bottom:12px;left:50%;transform:translateX(-50%);background:#3f3f46;padding:6px 12px;
border-radius:4px;display:none;max-width:80vw}
</style></head>
<body>
<header><h1>vad review: __TITLE__</h1><p id="mode"></p></header>
<main><section>
<h2>Summary</h2><dl id="summary">__SUMMARY__</dl>
<h2>Events</h2>
<div id="bar">
<label>sort <select id="sort"><option value="time">by time</option><option value="score">by score</option></select>
</label>
<label>clip <select id="fclip"><option value="">all</option>__CLIPS__</select></label>
<label>score &ge; <input id="fscore" type="number" step="any" style="width:6em"></label>
<label>verdict <select id="fverdict"><option value="">any</option><option value="none">none yet</option>
<option value="normal">normal</option><option value="anomaly">anomaly</option></select></label>
<span id="count"></span></div>
<div id="cards">
__CARDS__
</div></section>
<aside><video id="video" controls preload="none" playsinline></video><div id="vnote"></div>
<p class="keys">keys: j / k next / previous event &middot; space play / pause &middot; n mark normal &middot;
a mark anomaly</p>
<h2>Timelines</h2><div id="tls">
__TIMELINES__
</div></aside></main>
<div id="toast"></div>
<script type="application/json" id="review-data">__DATA__</script>
<script>
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
</script>
</body></html>
"""
