"""Watching a live source: frames scored as they arrive, events raised by the causal rule, evidence kept.

:class:`Watch` runs the loop of ``vad watch`` (and :meth:`vad.detector.Detector.watch`):

- a :class:`~vad.sources.Source` thread decodes the source into a bounded queue (the stalest frames dropped when
  scoring falls behind; outages reported as gaps, never scored);
- the loop takes every frame waiting (up to ``batch``), scores them (:class:`~vad.detector.Detector`: the same
  scores as ``vad score`` gives the same frames), and feeds the calibrated scores to the live rule
  (:class:`~vad.postprocess.CausalRule`: the mean of the last ``postprocess.causal_window`` scores, an event opens
  after ``eval.min_event_frames`` frames above the threshold, 1.0 calibrated, and closes after ``eval.close_frames``
  below);
- every change is one JSON line (:data:`LINE_FIELDS`) in ``OUT/events.jsonl``: ``start`` when an event opens,
  ``update`` at most once a second while it lasts, ``end`` when it closes, ``gap`` for an outage, ``status`` every
  ``status_every`` seconds; optionally on stdout and POSTed to a webhook;
- evidence, written off the loop by one thread: a JPEG snapshot of each event's peak frame with its heatmap
  (``OUT/snapshots/<event>.jpg``) and an annotated H.264 clip with pre- and post-roll (``OUT/clips/<event>.mp4``),
  from a ring buffer of the last ``pre_roll`` seconds of frames.

No sink blocks the loop: evidence and webhook work queue up to a bound and are dropped (and counted) beyond it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import resource
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from vad.postprocess import CausalRule, Event
from vad.runs import WatchFolder
from vad.sources import End, Frame, Gap, Source, describe

LINE_FIELDS = ("type", "event", "source", "frame", "pts", "wall_time", "score", "peak", "branch", "box", "snapshot",
               "clip")


@dataclass
class WatchOptions:
    out: Path | None = None  # the output folder (events.jsonl, snapshots/, clips/); None: no files
    realtime: bool = False  # a file is read at its own frame rate (as a camera sends it)
    fps: float | None = None  # score at this rate instead of the training footage's (cheaper; changes speeds)
    transport: str = "tcp"  # rtsp transport: tcp | udp
    listen: bool = False  # rtsp://: wait for a publisher to push to the URL
    open_timeout: float = 10.0
    stall_timeout: float = 5.0  # no frame for this long: the source is reopened (a gap)
    max_retries: int | None = None  # reopen attempts before giving up; None: forever
    queue_size: int = 16  # frames waiting between decoding and scoring; the stalest are dropped beyond it
    batch: int = 8  # frames scored together at most (whatever waits, up to this)
    pre_roll: float = 3.0  # seconds of frames before an event in its clip
    post_roll: float = 3.0  # seconds after its end
    status_every: float = 10.0  # seconds between status lines
    update_every: float = 1.0  # seconds between update lines of an open event, at least
    stdout: bool = False  # every line on stdout too
    webhook: str | None = None  # POST every line (JSON) to this URL
    snapshots: bool = True
    clips: bool = True
    max_frames: int | None = None  # stop after scoring this many frames
    max_seconds: float | None = None  # stop after this long
    progress: bool = True  # a status line on a terminal
    source_name: str | None = None  # how lines name the source (default: the source string)


@dataclass
class _Open:
    """What the loop keeps of the open event: its evidence and when it last said so."""

    id: str
    snapshot: str | None
    clip: str | None
    peak: float = -np.inf
    peak_frame: int = -1
    box: list | None = None
    branch: str = "appearance"
    last_update: float = 0.0
    closing_at: int | None = None  # the seq after which its clip stops (the end plus the post-roll)
    lines: int = 0


@dataclass
class _Stats:
    scored: int = 0
    received_t: deque = field(default_factory=lambda: deque(maxlen=2000))  # (monotonic time) of frames taken
    scored_t: deque = field(default_factory=lambda: deque(maxlen=2000))
    latency: deque = field(default_factory=lambda: deque(maxlen=2000))  # seconds, received -> scored
    emit_latency: deque = field(default_factory=lambda: deque(maxlen=200))  # seconds, rule satisfied -> line written
    gaps: int = 0


class Watch:
    """One source watched with one detector (several sources share a detector by stream name: not yet in the CLI)."""

    def __init__(self, detector, source: str, options: WatchOptions) -> None:
        self.det, self.source, self.o = detector, str(source), options
        self.name = options.source_name or self.source
        self.folder = WatchFolder(options.out) if options.out else None
        fps = options.fps or detector.fps
        self.fps = fps
        self.src = Source(self.source, fps, queue_size=options.queue_size, realtime=options.realtime,
                          transport=options.transport, listen=options.listen, open_timeout=options.open_timeout,
                          stall_timeout=options.stall_timeout, max_retries=options.max_retries)
        cfg = detector.cfg
        self.rule = CausalRule(1.0, cfg.postprocess.causal_window, cfg.eval.min_event_frames, cfg.eval.close_frames,
                               self.name, fps)
        self.session = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.ring: deque = deque(maxlen=max(1, int(round(options.pre_roll * (fps or 10.0)))))
        self.open: _Open | None = None
        self.closing: list[_Open] = []  # ended events whose clips still take post-roll frames
        self.stats = _Stats()
        self._stop = threading.Event()
        self.evidence = _Evidence(self, bound=4 * max(1, int(fps or 10)))
        self.sinks = _Sinks(self.folder, options.stdout, options.webhook)

    # --- control ------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop after the frames being scored (an open event is closed and its clip finished): SIGINT, SIGTERM."""
        self._stop.set()
        self.src.stop()

    def banner(self) -> str:
        det = self.det
        rate = (f"the training footage's {det.fps:g} fps" if det.fps and not self.o.fps else
                f"{self.o.fps:g} fps (--fps; the model learned motion at {det.fps or 'an unknown rate'} fps: speeds "
                "look different to its motion branch)" if self.o.fps else "the source's own rate (the model's "
                "training rate is unknown)")
        h, w = det.input_size
        ring_mb = self.ring.maxlen * 3 * 1920 * 1080 / 2**20
        return (f"watching {self.name} ({describe(self.source)}) with {det.run.root} ({det.backend}, input {w}x{h}); "
                f"frames sampled to {rate}; events at calibrated 1.0 (the {det.cfg.eval.threshold_percentile:g}th "
                f"percentile of normal hold-out scores); pre-roll ring buffer {self.ring.maxlen} frames (at most "
                f"{ring_mb:.0f} MB at 1080p); queue {self.o.queue_size} frames"
                + (f" -> {self.folder.events}" if self.folder else ""))

    # --- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> Iterator[dict]:
        """Watch until the source ends, ``stop()``, or ``max_frames`` / ``max_seconds``; yield every line written."""
        self._warm_up()
        t0 = time.monotonic()
        self.evidence.start()
        self.src.start()
        next_status = t0 + self.o.status_every
        try:
            while not self._stop.is_set():
                items = self._take()
                for item in items:
                    if isinstance(item, Gap):
                        yield from self._gap(item)
                    elif isinstance(item, End):
                        self._stop.set()
                frames = [i for i in items if isinstance(i, Frame)]
                if frames:
                    yield from self._score(frames)
                now = time.monotonic()
                if now >= next_status:
                    yield self._line(self._status(now - t0))
                    next_status = now + self.o.status_every
                if self.o.progress and sys.stderr.isatty():
                    print(f"\r{self._status_text()}", end="", file=sys.stderr, flush=True)
                if (self.o.max_frames and self.stats.scored >= self.o.max_frames) or (
                        self.o.max_seconds and now - t0 >= self.o.max_seconds):
                    self._stop.set()
        finally:
            self.src.stop()
            yield from self._close_open("stopped")
            for ended in self.closing:
                self.evidence.finish(ended)
            self.closing = []
            self.evidence.close()
            yield self._line(self._status(time.monotonic() - t0))
            self.sinks.close()
            self.src.join(timeout=5)
            if self.o.progress and sys.stderr.isatty():
                print(file=sys.stderr)

    def _warm_up(self) -> None:
        """Score a few blank frames before the source opens: a runtime's first calls allocate and are slow, and the
        first frames of the stream should not wait for that."""
        h, w = self.det.input_size
        for n in (self.o.batch, 1):
            self.det.score([np.zeros((h, w, 3), np.uint8)] * n, stream="warm-up", first=0)
        self.det.reset("warm-up")

    def _take(self) -> list:
        """Whatever the source has waiting (at least one item, or none after a short wait), up to ``batch`` frames."""
        first = self.src.get(timeout=0.2)
        if first is None:
            return []
        items = [first]
        while sum(isinstance(i, Frame) for i in items) < self.o.batch and not isinstance(items[-1], (Gap, End)):
            more = self.src.get(timeout=0)
            if more is None:
                break
            items.append(more)
        return items

    def _score(self, frames: list[Frame]) -> Iterator[dict]:
        runs, run = [], [frames[0]]
        for f in frames[1:]:  # frames after a drop start a new past (the scorer sees the jump in seq)
            if f.seq == run[-1].seq + 1:
                run.append(f)
            else:
                runs.append(run)
                run = [f]
        runs.append(run)
        for run in runs:
            out = self.det.score([f.rgb for f in run], stream=self.name, first=run[0].seq)
            now = time.monotonic()
            for i, f in enumerate(run):
                self.stats.scored += 1
                self.stats.received_t.append(f.received)
                self.stats.scored_t.append(now)
                self.stats.latency.append(now - f.received)
                branches = None if out.branches is None else out.branches[i]
                item = (f, float(out.calibrated[i]), out.maps[i], branches)
                self.ring.append(item)
                for ended in list(self.closing):  # post-roll of events that ended
                    self.evidence.frame(ended, item, False)
                    if f.seq >= ended.closing_at:
                        self.closing.remove(ended)
                        self.evidence.finish(ended)
                was_open = self.open
                yield from self._rule(f, float(out.calibrated[i]), out.maps[i], branches)
                if self.open is not None and self.open is was_open:  # (a new event's clip began with this frame)
                    self.evidence.frame(self.open, item, True)

    def _rule(self, f: Frame, calibrated: float, amap: np.ndarray, branches) -> Iterator[dict]:
        changes = self.rule.push(f.index, calibrated)
        for kind, event in changes:
            if kind == "start":
                yield from self._start(event, f)
            else:
                yield from self._end(event, f)
        if self.open is not None:
            if calibrated > self.open.peak:
                self.open.peak, self.open.peak_frame = calibrated, f.index
                self.open.box = self._box(amap, f.rgb.shape[:2])
                self.open.branch = self._branch(branches)
                self.evidence.snapshot(self.open, f, amap)
            now = time.monotonic()
            if not changes and now - self.open.last_update >= self.o.update_every:
                self.open.last_update = now
                yield self._event_line("update", self.rule.event(f.index), f, calibrated)

    def _start(self, event: Event, f: Frame) -> Iterator[dict]:
        eid = f"{self.session}-f{event.start}"
        folder = self.folder
        snap = str(folder.snapshot(eid)) if folder and self.o.snapshots else None
        clip = str(folder.clip(eid)) if folder and self.o.clips else None
        self.open = _Open(eid, snap, clip, last_update=time.monotonic())
        # The peak so far, from the frames of the run that opened it (in the ring buffer).
        for g, cal, amap, branches in self.ring:
            if g.index >= event.start and cal > self.open.peak:
                self.open.peak, self.open.peak_frame = cal, g.index
                self.open.box, self.open.branch = self._box(amap, g.rgb.shape[:2]), self._branch(branches)
                self.evidence.snapshot(self.open, g, amap)
        self.evidence.begin(self.open, list(self.ring), event.start)
        # trigger_frame: the frame that satisfied the rule (the event starts at its first frame above)
        line = self._event_line("start", event, f, self.ring[-1][1] if self.ring else None, trigger_frame=f.index)
        self.stats.emit_latency.append(time.monotonic() - f.received)
        yield line

    def _end(self, event: Event, f: Frame | None) -> Iterator[dict]:
        ended, self.open = self.open, None
        if ended is None:
            return
        ended.closing_at = (f.seq if f else 0) + int(round(self.o.post_roll * (self.fps or 10.0)))
        self.closing.append(ended)
        line = self._event_line("end", event, f, None, ended)
        if f is None or self._stop.is_set():  # no post-roll to wait for
            self.closing.remove(ended)
            self.evidence.finish(ended)
        yield line

    def _close_open(self, why: str) -> Iterator[dict]:
        for kind, event in self.rule.reset():
            if kind == "end":
                yield from self._end(event, None)

    def _gap(self, gap: Gap) -> Iterator[dict]:
        yield from self._close_open("gap")
        self.det.reset(self.name)
        self.stats.gaps += 1
        yield self._line({"type": "gap", "source": self.name, "wall_time": _iso(gap.end),
                          "start": _iso(gap.start), "end": _iso(gap.end), "seconds": round(gap.end - gap.start, 3),
                          "pts_before": gap.pts_before, "reason": gap.reason})

    # --- lines --------------------------------------------------------------------------------------------------
    def _event_line(self, kind: str, event: Event, f: Frame | None, score: float | None,
                    state: _Open | None = None, **extra) -> dict:
        o = state or self.open
        frame = {"start": event.start, "end": event.end}.get(kind, f.index if f else event.end)
        pts = self._pts(frame) if f is None or kind != "update" else f.pts
        line = {"type": kind, "event": o.id, "source": self.name, "frame": frame, "pts": pts,
                "wall_time": _iso(time.time()), "score": None if score is None else round(score, 4),
                "peak": round(float(o.peak), 4), "peak_frame": o.peak_frame, "branch": o.branch, "box": o.box,
                "snapshot": o.snapshot, "start_frame": event.start}
        if kind == "end":
            line.update(clip=o.clip, end_frame=event.end)
        line.update(extra)
        o.lines += 1
        return self._line(line)

    def _line(self, line: dict) -> dict:
        self.sinks.write(line)
        return line

    def _pts(self, index: int) -> float | None:
        for f, *_ in reversed(self.ring):
            if f.index == index:
                return round(f.pts, 3)
        return None

    def _box(self, amap: np.ndarray, shape: tuple[int, int]) -> list[int]:
        """``[x0, y0, x1, y1]`` in source pixels around the peak of ``amap``: the connected cells above half of it."""
        from scipy.ndimage import label

        peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
        high = amap >= amap[peak] - 0.5 * (amap[peak] - np.median(amap))
        parts, _ = label(high)
        ys, xs = np.nonzero(parts == parts[peak])
        sy, sx = shape[0] / amap.shape[0], shape[1] / amap.shape[1]
        return [int(xs.min() * sx), int(ys.min() * sy), int(round((xs.max() + 1) * sx)),
                int(round((ys.max() + 1) * sy))]

    def _branch(self, branches) -> str:
        names = self.det.branches
        return names[int(np.argmax(branches))] if branches is not None and names else "appearance"

    def _status(self, elapsed: float) -> dict:
        s = self.stats
        lat = np.asarray(s.latency) * 1000
        span = min(self.o.status_every, max(elapsed, 1e-3))
        window = [t for t in s.scored_t if t >= time.monotonic() - span]
        return {"type": "status", "source": self.name, "wall_time": _iso(time.time()), "seconds": round(elapsed, 1),
                "frames_decoded": self.src.decoded, "frames_scored": s.scored, "dropped": self.src.dropped,
                "fps_in": round(self._rate(s.received_t), 2), "fps_scored": round(len(window) / span, 2),
                "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
                "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
                "open_event": self.open.id if self.open else None, "gaps": s.gaps,
                "evidence_dropped": self.evidence.dropped, "webhook_failed": self.sinks.failed,
                "rss_mb": _rss_mb(), "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}

    def _status_text(self) -> str:
        s = self.stats
        lat = np.asarray(s.latency) * 1000
        p = (f"{np.percentile(lat, 50):.0f}/{np.percentile(lat, 95):.0f} ms") if len(lat) else "-"
        return (f"{self.name}: in {self._rate(s.received_t):.1f} fps, scored {self._rate(s.scored_t):.1f} fps, "
                f"dropped {self.src.dropped}, latency p50/p95 {p}, event {self.open.id if self.open else '-'}   ")

    @staticmethod
    def _rate(times: deque) -> float:
        recent = [t for t in times if t >= time.monotonic() - 5]
        return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0


def _rss_mb() -> float | None:
    """The process's resident memory now (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _yield_to_scoring() -> None:
    """Lower this thread's priority (Linux: nice applies per thread): evidence and webhooks wait for the cores while
    frames are scored, and catch up between them."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: the loop's priority then
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Sinks:
    """events.jsonl (appended, flushed per line), stdout, a webhook (a thread, a bounded queue, retries)."""

    def __init__(self, folder: WatchFolder | None, stdout: bool, webhook: str | None, bound: int = 1000) -> None:
        self.file = None
        if folder is not None:
            folder.root.mkdir(parents=True, exist_ok=True)
            self.file = folder.events.open("a", buffering=1)
        self.stdout, self.failed = stdout, 0
        self.hook: queue.Queue | None = None
        if webhook:
            self.hook = queue.Queue(maxsize=bound)
            self.url = webhook
            self.thread = threading.Thread(target=self._post_all, name="vad-webhook", daemon=True)
            self.thread.start()

    def write(self, line: dict) -> None:
        text = json.dumps(line)
        if self.file is not None:
            self.file.write(text + "\n")
        if self.stdout:
            print(text, flush=True)
        if self.hook is not None:
            try:
                self.hook.put_nowait(text)
            except queue.Full:
                self.failed += 1

    def _post_all(self) -> None:
        _yield_to_scoring()
        while True:
            text = self.hook.get()
            if text is None:
                return
            for attempt in range(3):
                try:
                    req = urllib.request.Request(self.url, data=text.encode(), method="POST",
                                                 headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        resp.read()
                    break
                except Exception:  # a failing webhook never stops scoring: retried, then counted
                    time.sleep(0.5 * 2**attempt)
            else:
                self.failed += 1

    def close(self) -> None:
        if self.hook is not None:
            self.hook.put(None)
            self.thread.join(timeout=20)
        if self.file is not None:
            self.file.close()


class _Evidence:
    """Snapshots and clips, written by one thread off the scoring loop; tasks beyond ``bound`` are dropped."""

    def __init__(self, watch: Watch, bound: int) -> None:
        self.watch, self.tasks = watch, queue.Queue(maxsize=bound)
        self.dropped = 0
        self.writers: dict[str, object] = {}
        self.thread = threading.Thread(target=self._work, name="vad-evidence", daemon=True)
        det = watch.det
        self.heat = det.reference.heat_scale(det.cfg.eval.threshold_percentile, det.cfg.render.heat_range)
        self.render = det.cfg.render

    def start(self) -> None:
        self.thread.start()

    def _put(self, task: tuple, must: bool = False) -> None:
        try:
            self.tasks.put(task, timeout=5 if must else 0)  # beginnings and ends wait a little; frames never
        except queue.Full:
            self.dropped += 1

    def snapshot(self, o: _Open, f: Frame, amap: np.ndarray) -> None:
        if o.snapshot:
            self._put(("snapshot", o.snapshot, f.rgb, amap, o.peak), must=True)

    def begin(self, o: _Open, ring: list, start: int) -> None:
        """The clip of event ``o``, from the pre-roll frames in ``ring`` (those from frame ``start`` on are inside)."""
        if o.clip:
            self._put(("begin", o.clip, ring, start), must=True)

    def frame(self, o: _Open, item: tuple, inside: bool) -> None:
        if o.clip:
            self._put(("frame", o.clip, item, inside))

    def finish(self, o: _Open) -> None:
        if o.clip:
            self._put(("finish", o.clip), must=True)

    def close(self) -> None:
        self.tasks.put(("quit",))
        self.thread.join(timeout=60)

    def _work(self) -> None:
        _yield_to_scoring()
        while True:
            task = self.tasks.get()
            try:
                if task[0] == "quit":
                    for w in self.writers.values():
                        w.close()
                    return
                getattr(self, f"_do_{task[0]}")(*task[1:])
            except Exception as err:  # evidence never stops scoring; say what failed
                print(f"note: evidence not written ({task[0]} {task[1] if len(task) > 1 else ''}): {err}",
                      file=sys.stderr)

    def _picture(self, rgb: np.ndarray, amap: np.ndarray, calibrated: float, inside: bool, text: str) -> np.ndarray:
        from vad.heatmap import heat_picture
        from vad.render import _font, _mark

        h, w = rgb.shape[:2]
        pic = heat_picture(rgb, amap, self.heat, self.render)[: h - h % 2, : w - w % 2].copy()
        if inside:
            _mark(pic, pic.shape[0], _font(max(12, h // 24)))
        from PIL import Image, ImageDraw

        img = Image.fromarray(pic)
        ImageDraw.Draw(img).text((6, pic.shape[0] - 18), f"{text}  score {calibrated:.2f}", fill=(255, 255, 255),
                                 font=_font(12))
        return np.asarray(img)

    def _do_snapshot(self, path: str, rgb: np.ndarray, amap: np.ndarray, calibrated: float) -> None:
        from PIL import Image

        from vad.atomic import atomic_path

        pic = self._picture(rgb, amap, calibrated, True, Path(path).stem)
        with atomic_path(Path(path), ".jpg") as tmp:
            Image.fromarray(pic).save(tmp, format="JPEG", quality=88)

    def _do_begin(self, path: str, ring: list, start: int) -> None:
        self.writers[path] = _ClipWriter(Path(path), self.watch.fps or 10.0)
        for item in ring:
            self._do_frame(path, item, item[0].index >= start)

    def _do_frame(self, path: str, item: tuple, inside: bool) -> None:
        writer = self.writers.get(path)
        if writer is None:
            return
        f, calibrated, amap, _ = item
        writer.write(self._picture(f.rgb, amap, calibrated, inside, f"frame {f.index}  {f.pts:.1f}s"))

    def _do_finish(self, path: str) -> None:
        writer = self.writers.pop(path, None)
        if writer is not None:
            writer.close()


class _ClipWriter:
    """An event's MP4, written to a temporary file and renamed when complete (a playable file or none)."""

    def __init__(self, path: Path, fps: float) -> None:
        from vad.atomic import TEMP_PREFIX

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.writer = path, fps, None
        self.tmp = path.with_name(f"{TEMP_PREFIX}{path.stem}.{os.getpid()}.mp4")

    def write(self, pic: np.ndarray) -> None:
        from vad.render import VideoWriter

        if self.writer is None:
            # ultrafast: the clip is encoded beside the scoring loop on the same cores
            self.writer = VideoWriter(self.tmp, pic.shape[1], pic.shape[0], self.fps, preset="ultrafast")
            self.size = pic.shape[:2]
        if pic.shape[:2] != self.size:  # the stream changed resolution mid-event: keep the clip's size
            from PIL import Image

            pic = np.asarray(Image.fromarray(pic).resize(self.size[::-1]))
        self.writer.write(pic)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.tmp.replace(self.path)
            self.writer = None
