"""One camera of a live watch: its source, event tracker, evidence, sinks and counts, whoever scores its frames.

:class:`Camera` is what ``vad watch`` (:class:`vad.live.watch.Watch`, one camera scored alone) and ``vad serve``
(:class:`vad.site.Site`, many cameras whose frames share batches of one model) have in common: frames are taken from
its source (:meth:`Camera.take`), scored elsewhere, and handed back with their scores (:meth:`Camera.scored`), which
the camera turns into lines (to each of its sinks in order, and returned to the caller), evidence and counts.

Its state: ``starting`` until its first frame, ``scoring``, ``reconnecting`` after a gap began (no frame for
``stall_timeout`` seconds, or the source failed) until frames come again, ``down`` once the source ended or gave up,
``stopped`` after :meth:`Camera.close`. In memory it holds its queue, the pre-roll ring of scored frames (with their
anomaly maps) and the evidence queue (at most 4 s of frames): :meth:`Camera.memory_bound`.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from PIL import Image

from vad.config import RenderConfig, RunConfig
from vad.heatmap import font, heat_picture, mark_anomaly
from vad.live.eventlog import event_log
from vad.live.events import Change, EventTracker, Scored, gap_line
from vad.live.evidence import Evidence
from vad.live.options import SOURCE_OPTIONS
from vad.live.sinks import interrupted_events, standard_sinks
from vad.live.sources import End, Frame, Gap, Source
from vad.live.stats import WatchStats
from vad.runs import WatchFolder, locked
from vad.runtime.postprocess import CausalRule
from vad.runtime.reference import NormalReference

log = logging.getLogger(__name__)

HISTORY = 60  # seconds of scores a tile keeps (the highest of each second)


@dataclass(frozen=True)
class ModelInfo:
    """What a camera needs to know of the model that scores it (a :class:`vad.live.detector.Detector` has it all)."""

    cfg: RunConfig
    reference: NormalReference
    fps: float | None  # the training footage's frame rate
    branches: tuple[str, ...]

    def live_rule(self, stream: str, fps: float | None) -> CausalRule:
        """The live rule of its settings for ``stream`` at ``fps``: events at calibrated 1.0."""
        c = self.cfg
        return CausalRule(1.0, c.postprocess.causal_window, c.eval.min_event_frames, c.eval.close_frames, stream, fps)


class Tile:
    """What the control room shows of a camera: its latest scored frame (:attr:`latest`), drawn with its anomaly map
    (on heat scale ``heat`` ``(low, high)``, ``render``'s colours) while an event is open, and its recent scores."""

    def __init__(self, heat: tuple[float, float], render: RenderConfig) -> None:
        self.heat, self.render = heat, render
        self.latest: Scored | None = None  # the latest scored frame
        self.history: deque[tuple[int, float]] = deque(maxlen=HISTORY)  # (second, its highest score), the last minute

    def add(self, last: Frame, calibrated: np.ndarray, amap: np.ndarray) -> None:
        """A batch scored: ``calibrated`` ``(B,)`` its scores, ``last`` its last frame with its map ``amap``."""
        self.latest = Scored(last, float(calibrated[-1]), amap, None)
        second = int(time.time())
        top = float(np.max(calibrated))
        if self.history and self.history[-1][0] == second:
            top = max(top, self.history.pop()[1])
        self.history.append((second, top))

    def recent(self, seconds: int = HISTORY) -> list[tuple[int, float]]:
        """``(unix second, highest calibrated score in it)`` over the last ``seconds``."""
        since = int(time.time()) - seconds
        return [x for x in list(self.history) if x[0] > since]

    def picture(self, alert: bool, width: int = 640) -> tuple[int, bytes] | None:
        """The latest scored frame as JPEG ``(its seq, bytes)``, at most ``width`` wide, with its anomaly map drawn
        when ``alert`` (an event is open); None before the first."""
        s = self.latest
        if s is None:
            return None
        rgb = s.frame.rgb
        if alert:
            rgb = np.array(heat_picture(rgb, s.amap, self.heat, self.render))
            mark_anomaly(rgb, rgb.shape[0], font(max(12, rgb.shape[0] // 24)))
        img = Image.fromarray(rgb)
        if img.width > width:
            img = img.resize((width, max(2, round(img.height * width / img.width))), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        return s.frame.seq, buf.getvalue()


class Camera:
    """Camera ``name`` reading ``source`` (``options``: a :class:`vad.live.watch.WatchOptions`) for a model described
    by ``model``; its lines go to the standard sinks its options ask for, then to ``sinks``; ``wake`` is set when its
    source queues something; ``on_score`` gets its latest calibrated score after each batch."""

    def __init__(self, name: str, source: str, model: ModelInfo, options, sinks: Sequence[Callable] = (),
                 wake: threading.Event | None = None, on_score: Callable[[float], None] | None = None,
                 on_written: Callable[[str, str, str], None] | None = None) -> None:
        self.name, self.source, self.o = name, str(source), options
        self.folder = WatchFolder(options.out) if options.out else None
        self.fps = fps = options.fps or model.fps
        self.src = Source(self.source, fps, wake=wake, **{k: getattr(options, k) for k in SOURCE_OPTIONS})
        cfg = model.cfg
        self.session = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        heat = model.reference.heat_scale(cfg.eval.threshold_percentile, cfg.render.heat_range)
        rate = fps or 10.0
        self.evidence = Evidence(self.folder, heat, cfg.render, rate, int(round(options.post_roll * rate)),
                                 bound=4 * max(1, int(rate)), snapshots=options.snapshots, clips=options.clips,
                                 on_written=on_written)
        self.tile = Tile(heat, cfg.render)
        self.tracker = EventTracker(model.live_rule(name, fps), self.session, branches=model.branches,
                                    update_every=options.update_every, recent=int(round(options.pre_roll * rate)),
                                    paths=self.evidence.paths)
        self.stats = WatchStats(name, options.status_every)
        self.sinks = [*standard_sinks(self.folder.events if self.folder else None, options.stdout, options.webhook),
                      *options.sinks, *sinks]
        self.state = "starting"
        self.events = 0  # events started
        self.last_gap: dict | None = None
        self.last_score: float | None = None  # the latest calibrated score
        self.started = time.monotonic()
        self.stopping = False
        self.on_score = on_score
        self._lock = threading.Lock()  # lines are written by one thread at a time (scoring, gaps, status)
        self._hold: ExitStack | None = None  # the output folder's lock, from start to close

    def start(self) -> None:
        """Start reading. With an output folder: hold its lock (one writer), which sweeps the half-written files a
        killed watch left, and end the events it left open (``reason: interrupted``)."""
        self._hold = ExitStack()
        try:
            if self.folder is not None:
                self._hold.enter_context(locked(self.folder.root, f"camera {self.name} ({self.source})",
                                                reentrant=True))
                with self._lock:
                    for line in interrupted_events(self.folder.events):
                        log.warning(f"note: camera {self.name}: event {line['event']} was left open by a watch "
                                    "that was stopped without closing it; ended as interrupted")
                        self._write(line)
            self.evidence.start()
            self.src.start()
        except BaseException:  # not started: the folder is free again
            self._hold.close()
            raise

    def stop_source(self) -> None:
        self.stopping = True
        self.src.stop()

    def close(self) -> list[dict]:
        """Close an open event (its clip finished without post-roll), write the last status line, close the sinks;
        returns the lines written."""
        self.stop_source()
        with self._lock:
            lines = self._apply(self.tracker.reset(), None)
            self.evidence.close()
            lines.append(self._write(self.status_line()))
            for sink in self.sinks:
                close = getattr(sink, "close", None)
                if close is not None:
                    close()
            self.state = "stopped"
        self.src.join(timeout=5)
        if self._hold is not None:
            self._hold.close()
        return lines

    def memory_bound(self, width: int = 1920, height: int = 1080) -> float:
        """MiB at most held by this camera's frames at ``width`` x ``height`` (queue, pre-roll ring, evidence)."""
        frames = self.src.queue_size + (self.tracker.recent.maxlen or 0) + self.evidence.tasks.maxsize
        return frames * width * height * 3 / 2**20

    def take(self, limit: int, timeout: float = 0.0) -> tuple[list[Frame], list[Gap | End]]:
        """Up to ``limit`` frames waiting (``timeout``: seconds to wait for the first item), and the gap or end that
        stopped the taking (to be handed to :meth:`gap` / :meth:`ended` once the frames before it are scored)."""
        frames: list[Frame] = []
        while len(frames) < limit:
            item = self.src.get(timeout=timeout if not frames else 0)
            timeout = 0
            if item is None:
                break
            if isinstance(item, Frame):
                frames.append(item)
                continue
            return frames, [item]
        return frames, []

    def scored(self, frames: Sequence[Frame], calibrated: np.ndarray, maps: np.ndarray, branches: np.ndarray | None
               ) -> list[dict]:
        """``frames`` scored (``calibrated`` ``(B,)``, ``maps`` ``(B, h, w)``, ``branches`` ``(B, k)`` or None):
        the tracker, the evidence, the counts; returns the lines written."""
        lines: list[dict] = []
        with self._lock:
            self.stats.add(frames, time.monotonic())
            if frames and self.state in ("starting", "reconnecting"):
                self.state = "scoring"
            for i, f in enumerate(frames):
                s = Scored(f, float(calibrated[i]), maps[i], None if branches is None else branches[i])
                self.evidence.post_roll(s)
                lines += self._apply(self.tracker.push(s), s)
            if len(frames):
                self.tile.add(frames[-1], calibrated, maps[-1])
                self.last_score = float(calibrated[-1])
                if self.on_score is not None:
                    self.on_score(self.last_score)
        return lines

    def gap(self, gap: Gap) -> list[dict]:
        """An outage: the open event ends, the gap line is written (the caller forgets the stream's past)."""
        with self._lock:
            lines = self._apply(self.tracker.reset(), None)
            self.stats.gaps += 1
            line = gap_line(self.name, gap)
            self.last_gap = line
            lines.append(self._write(line))
            if self.state != "down":
                self.state = "scoring" if self.src.decoded else "starting"
        return lines

    def ended(self, end: End) -> list[dict]:
        """The source ended or gave up: the open event ends, and the clips of events that ended before it are
        finished with the post-roll they have (no frame will come); the camera is down."""
        with self._lock:
            lines = self._apply(self.tracker.reset(), None)
            self.evidence.finish_post_roll()
            self.state = "down" if not self.stopping else self.state
        if not self.stopping:
            log.warning(f"note: camera {self.name}: {end.reason}; it is down")
        return lines

    def refresh_state(self) -> None:
        """``reconnecting`` while no frame came for the source's stall timeout (the source is reopening it); its
        open event ends then, at the last frame scored (its clip finished), rather than when frames come again."""
        if self.state == "scoring" and self.src.stalled():
            with self._lock:
                self.state = "reconnecting"
                self._apply(self.tracker.reset(), None)

    def status_line(self) -> dict:
        o = self.tracker.open
        failed = sum(getattr(sink, "failed", 0) for sink in self.sinks)
        return self.stats.status(time.monotonic() - self.started, decoded=self.src.decoded, dropped=self.src.dropped,
                                 open_event=o.id if o else None, evidence_dropped=self.evidence.dropped,
                                 sink_failed=failed)

    def status(self) -> list[dict]:
        """Write a status line; returns it (in a list, as the other writers)."""
        with self._lock:
            return [self._write(self.status_line())]

    def picture(self, width: int = 640) -> tuple[int, bytes] | None:
        """The latest scored frame as JPEG (:meth:`Tile.picture`), its anomaly map drawn while an event is open."""
        return self.tile.picture(self.tracker.open is not None, width)

    def rewrite_events(self, keep: Callable[[dict], bool]) -> int:
        """Keep only the lines of ``events.jsonl`` for which ``keep`` is true (retention), between two of this
        camera's writes; the file sink goes on in the new file. Returns the lines removed."""
        if self.folder is None or not self.folder.events.is_file():
            return 0
        with self._lock:
            return event_log(self.folder.events).rewrite(keep)

    def status_text(self) -> str:
        o = self.tracker.open
        return f"[{self.state}] " + self.stats.text(dropped=self.src.dropped, open_event=o.id if o else None)

    def _apply(self, changes: list[Change], s: Scored | None) -> list[dict]:
        """Schedule the evidence of the tracker's ``changes`` at frame ``s`` (None: no frame, the tracker was reset)
        and write their lines."""
        self.events += sum(c.kind == "start" for c in changes)
        self.evidence.follow(changes, self.tracker, s, post_roll=not self.stopping)
        return [self._write(c.line) for c in changes if c.line is not None]

    def _write(self, line: dict) -> dict:
        for sink in self.sinks:
            sink(line)
        return line

