"""``RUN/review.html``: the review page of a scored run, written by the evaluate stage.

One self-contained file (inline CSS and JS, no network) that opens from ``file://``: ``templates/review.html``
rendered by Jinja2 (autoescaped) with ``static/review.css`` and ``static/review.js`` inlined, and the page's data as a
JSON block (``<script id="review-data" type="application/json">``). It shows a summary of the run, per clip a
timeline (the score against the threshold, the events, the ground truth), and the events as cards with a thumbnail
of the peak frame and its heatmap (:mod:`vad.review.thumbnails`). A card or a timeline plays the clip from 2 s
before the event: the rendered video (``RUN/videos/<clip>.mp4``) when it loads, else the source video. The render
stage runs after evaluate, so the page does not decide at writing time; its script tries the rendered video first,
each time.
"""

from __future__ import annotations

import json
import math
import os
from functools import cache
from importlib.resources import files
from pathlib import Path
from urllib.parse import quote

import numpy as np
from jinja2 import Environment, PackageLoader, Template
from markupsafe import Markup

from vad.atomic import write_text
from vad.config import EvalConfig, PostprocessConfig, RenderConfig
from vad.metrics import label_events
from vad.review.thumbnails import write_thumbnails
from vad.review.view import ScoredRunView
from vad.runs import RunFolder
from vad.runtime.postprocess import Event
from vad.text import num, pct, seconds

PRE_ROLL = 2.0  # seconds of video before an event when it plays
POINTS = 600  # a timeline's score curve: at most this many points (the maximum of each span of frames)


def write_review(s: ScoredRunView, per_clip: dict[str, list[Event]], metrics: dict, post: PostprocessConfig,
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
        timelines.append(timeline(name, scores, threshold, s.labels.get(name), per_clip[name], fps))
        clips[name] = {"frames": record.frames, "fps": fps, "video": _href(folder, folder.video(name)),
                       "source": _href(folder, Path(record.path)) if record.kind == "video" else None,
                       "source_video": record.kind == "video"}
        for e in per_clip[name]:
            peak = float(scores[e.peak_frame])
            events.append({"id": e.id, "clip": name, "start": e.start, "end": e.end, "peak": peak})
            thumb = None if e.id in missing else _href(folder, folder.thumbnail(e.id))
            cards.append(card(e, peak, fps, thumb, missing.get(e.id)))
    data = {"run": folder.root.name, "clips": clips, "events": events, "preroll": PRE_ROLL,
            "static_note": f"Read-only: this page was opened as a file, so verdicts cannot be recorded here. To mark "
                           f"events, serve it: vad review --run {folder.root}",
            "no_video_note": f"render it (vad render --run {folder.root} --clip CLIP), or keep its source video"}
    page = render_page(title=folder.root.name, summary=summary(s, per_clip, metrics, post, ev),
                       clips=list(s.manifest), cards=cards, timelines=timelines, data=data)
    write_text(page, folder.review_page)
    return folder.review_page


def render_page(data: dict, live: bool = False, **context) -> str:
    """The page (``templates/review.html``) with its style and script inlined and ``data`` as its data block:
    a run's (``live`` false: ``summary``, ``clips``, ``cards``, ``timelines``) or a site's live events (``live``:
    ``clips`` names the cameras; the cards come from the script)."""
    blank = {"id": "", "clip": "", "peak": 0.0, "peak_frame": 0, "branch": "", "thumb": "data:,", "note": None,
             "when": "", "long": ""}
    context = {"summary": [], "clips": [], "cards": [], "timelines": [], **context}
    return _template().render(live=live, blank=blank, data=_json_block({**data, "live": live}),
                              css=_static("review.css"), js=_static("review.js"), **context)


def render_login() -> str:
    """``vad serve``'s login page (``templates/login.html``, the review page's style)."""
    return _template("login.html").render(css=_static("review.css"))


@cache
def _template(name: str = "review.html") -> Template:
    env = Environment(loader=PackageLoader("vad.review", "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template(name)


def _static(name: str) -> Markup:
    """``static/<name>`` of this package, to inline in the page's ``<style>`` or ``<script>``."""
    text = (files("vad.review") / "static" / name).read_text(encoding="utf-8")
    if "</style" in text.lower() or "</script" in text.lower():
        raise ValueError(f"static/{name} contains a closing </style> or </script> tag; expected none (it is inlined "
                         "into the page: write '<\\/' in a string instead)")
    return Markup(text)


def _json_block(data: dict) -> Markup:
    """``data`` as JSON safe inside ``<script>``: ``<``, ``>``, ``&`` as ``\\u`` escapes."""
    text = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def _href(folder: RunFolder, path: Path) -> str:
    """A link from the page (in ``RUN``) to ``path``: relative, percent-encoded."""
    return quote(Path(os.path.relpath(Path(path).resolve(), folder.root.resolve())).as_posix())


def summary(s: ScoredRunView, per_clip: dict[str, list[Event]], metrics: dict, post: PostprocessConfig,
            ev: EvalConfig) -> list[tuple[str, str]]:
    """The summary's rows: ``(name, value)``."""
    frames = sum(r.frames for r in s.manifest.values())
    fps = {n: s.fps(n, ev.fps) for n in s.manifest}
    footage = sum(s.manifest[n].frames / f for n, f in fps.items()) if all(fps.values()) else None
    found = sum(map(len, per_clip.values()))
    alarms = metrics.get("alarms", {})
    rows = [("clips", f"{len(s.manifest)} ({len(s.labels)} labelled)"), ("frames", f"{frames:,}"),
            ("footage", "n/a (frame rates unknown: set eval.fps)" if footage is None else
             f"{footage / 3600:.3g} h ({seconds(footage)})"),
            ("events", f"{found} ({metrics.get('event_rule', ev.rule)} rule)"),
            ("events per hour", num(alarms.get("events_per_hour"), ".1f"))]
    if s.labels:
        rows += [("frame AUC micro", num(metrics.get("frame_auc_micro"))),
                 ("frame AUC micro, raw scores", num(metrics.get("frame_auc_micro_raw"))),
                 ("frame AUC macro", num(metrics.get("frame_auc_macro"))),
                 ("normal frames inside events", pct(alarms.get("normal_frames_in_events"))),
                 ("anomalous frames caught", pct(alarms.get("anomalous_frames_caught"))),
                 ("false alarm events", str(alarms.get("false_alarm_events", "n/a")))]
    threshold = metrics.get("threshold", {})
    values = ", ".join(f"{k}: {v:.4g}" for k, v in threshold.get("values", s.thresholds).items())
    shown = "1.0 on the calibrated scores shown" if s.normalisation == "calibrated" else "in the model's units"
    calibrated = ", calibrated" if s.normalisation == "calibrated" else ""
    rows += [("threshold", f"{values} ({shown})"), ("threshold from", threshold.get("rule", "n/a")),
             ("scores shown", f"smoothed (sigma {post.sigma}){calibrated}")]
    return rows


def timeline(name: str, scores: np.ndarray, threshold: float, labels: np.ndarray | None, found: list[Event],
             fps: float | None) -> dict:
    """One clip's timeline, as the template draws it: an SVG 1000 units wide over the clip's frames, 56 high, with
    its score curve (``points``: the maximum of each span of frames), the ``threshold``'s height, the events
    (``(id, x, width)``) and the ground truth (``truth``: ``(x, width)``)."""
    n = len(scores)
    step = max(1, math.ceil(n / POINTS))
    pooled = np.asarray([scores[i : i + step].max() for i in range(0, n, step)], np.float64)
    lo, hi = min(0.0, threshold, float(pooled.min())), max(threshold, float(pooled.max()))
    hi += 0.1 * (hi - lo) or 1.0

    def x(f: float) -> float:
        return round(1000 * f / n, 2)

    def y(v: float) -> float:
        return round(50 - 46 * (v - lo) / (hi - lo), 2)

    truth = [(x(a), max(x(b) - x(a), 1)) for a, b in (label_events(labels) if labels is not None else [])]
    events = [(e.id, x(e.start), max(x(e.end + 1) - x(e.start), 2)) for e in found]
    return {"name": name, "length": f"{n} frames" + (f", {seconds(n / fps)}" if fps else ""), "truth": truth,
            "events": events, "points": " ".join(f"{x((i + 0.5) * step)},{y(v)}" for i, v in enumerate(pooled)),
            "threshold": y(threshold)}


def card(e: Event, peak: float, fps: float | None, thumb: str | None, note: str | None) -> dict:
    """An event's card, as the template draws it: its thumbnail (``thumb``: a link; ``None``: ``note`` says why
    there is none), when, how long, its peak score and branch."""
    frames = e.end - e.start + 1
    return {"id": e.id, "clip": e.clip, "peak": peak, "peak_frame": e.peak_frame, "branch": e.branch,
            "thumb": thumb, "note": note,
            "when": f"{seconds(e.start_s)} (frame {e.start})" if e.start_s is not None else f"frame {e.start}",
            "long": seconds(frames / fps) if fps else f"{frames} frames"}
