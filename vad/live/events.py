"""Events of a live watch: each scored frame through the live rule, the rule's changes as JSON lines.

:class:`EventTracker` takes every scored frame (:class:`Scored`: its calibrated score, anomaly map and branch scores),
pushes it to :class:`~vad.runtime.postprocess.CausalRule` (the mean of the last ``window`` scores; an event opens after
``open_frames`` frames above 1.0 calibrated and closes after ``close_frames`` below), and returns what changed as
:class:`Change` records, in order: ``peak`` (the open event has a new peak frame: its snapshot is due), ``start``,
``update`` (at most once every ``update_every`` seconds while an event lasts) and ``end``, the last three with their
line (:data:`LINE_FIELDS`). It keeps the last ``recent`` scored frames (the clip's pre-roll; the pts of an event's first
frame come from them).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from vad.live import iso
from vad.live.sources import Frame, Gap
from vad.runtime.postprocess import CausalRule, Event

LINE_FIELDS = ("type", "event", "source", "frame", "pts", "wall_time", "score", "peak", "branch", "box", "snapshot",
               "clip")


class Scored(NamedTuple):
    """One scored frame, as the tracker, the pre-roll buffer and the evidence keep it."""

    frame: Frame
    calibrated: float  # 1.0: the event threshold
    amap: np.ndarray  # (h, w) anomaly map, the model's units
    branches: np.ndarray | None  # (K,) per-branch scores of a fused model, else None


@dataclass
class OpenEvent:
    """What the tracker keeps of an event: its id, where its evidence goes, its peak so far."""

    id: str
    start: int  # the index of its first frame above the threshold
    snapshot: str | None  # the snapshot's path (None: no snapshot)
    clip: str | None  # the clip's path (None: no clip)
    peak: float = -np.inf
    peak_frame: int = -1
    box: list[int] | None = None  # [x0, y0, x1, y1] around the peak, source pixels
    branch: str = "appearance"
    last_update: float = 0.0  # time.monotonic() of its last start or update line


@dataclass
class Change:
    """One thing that happened at a frame: ``kind`` is ``peak`` (``at``: the new peak frame), ``start``, ``update``
    or ``end`` (``line``: the line to write)."""

    kind: str
    event: OpenEvent
    line: dict | None = None
    at: Scored | None = None


def peak_box(amap: np.ndarray, shape: tuple[int, int]) -> list[int]:
    """``[x0, y0, x1, y1]`` in pixels of a frame of ``shape`` ``(H, W)`` around the peak of ``amap`` ``(h, w)``: the
    connected cells above half of it (half way from the median to the peak)."""
    from scipy.ndimage import label

    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    high = amap >= amap[peak] - 0.5 * (amap[peak] - np.median(amap))
    parts, _ = label(high)
    ys, xs = np.nonzero(parts == parts[peak])
    sy, sx = shape[0] / amap.shape[0], shape[1] / amap.shape[1]
    return [int(xs.min() * sx), int(ys.min() * sy), int(round((xs.max() + 1) * sx)), int(round((ys.max() + 1) * sy))]


def gap_line(source: str, gap: Gap) -> dict:
    """The ``gap`` line of an outage of ``source``."""
    return {"type": "gap", "source": source, "wall_time": iso(gap.end), "start": iso(gap.start), "end": iso(gap.end),
            "seconds": round(gap.end - gap.start, 3), "pts_before": gap.pts_before, "reason": gap.reason}


def _no_paths(event: str) -> tuple[str | None, str | None]:
    return None, None


class EventTracker:
    """The events of one stream: ``rule`` (its ``clip`` names the source in lines) fed frame by frame.

    ``session`` prefixes event ids (``<session>-f<first frame>``); ``branches`` names a fused model's branches (the
    one scoring higher at the peak names the event); ``paths(event id)`` gives ``(snapshot, clip)`` paths or
    ``None``s; ``recent``: scored frames kept (the pre-roll)."""

    def __init__(self, rule: CausalRule, session: str, *, branches: Sequence[str] | None = None,
                 update_every: float = 1.0, recent: int = 1,
                 paths: Callable[[str], tuple[str | None, str | None]] = _no_paths) -> None:
        self.rule, self.source, self.session = rule, rule.clip, session
        self.branches, self.update_every, self.paths = branches, update_every, paths
        self.recent: deque[Scored] = deque(maxlen=max(1, recent))
        self.open: OpenEvent | None = None

    def push(self, s: Scored) -> list[Change]:
        """Frame ``s`` scored (frames in order; a gap calls :meth:`reset` first): what changed."""
        self.recent.append(s)
        f, out = s.frame, []
        changes = self.rule.push(f.index, s.calibrated)
        for kind, event in changes:
            out += self._start(event, s) if kind == "start" else self._end(event, f)
        o = self.open
        if o is not None:
            if s.calibrated > o.peak:
                out.append(self._peak(o, s))
            now = time.monotonic()
            if not changes and now - o.last_update >= self.update_every:
                o.last_update = now
                out.append(Change("update", o, self._line("update", self.rule.event(f.index), f, s.calibrated, o)))
        return out

    def reset(self) -> list[Change]:
        """Forget the past (a gap, or the watch ends); the open event ends at the last frame pushed."""
        return [c for kind, event in self.rule.reset() if kind == "end" for c in self._end(event, None)]

    def _peak(self, o: OpenEvent, s: Scored) -> Change:
        o.peak, o.peak_frame = s.calibrated, s.frame.index
        o.box = peak_box(s.amap, s.frame.rgb.shape[:2])
        names = self.branches
        o.branch = names[int(np.argmax(s.branches))] if s.branches is not None and names else "appearance"
        return Change("peak", o, at=s)

    def _start(self, event: Event, s: Scored) -> list[Change]:
        eid = f"{self.session}-f{event.start}"
        o = self.open = OpenEvent(eid, event.start, *self.paths(eid), last_update=time.monotonic())
        out = []
        for r in self.recent:  # the peak so far, from the frames of the run that opened it
            if r.frame.index >= event.start and r.calibrated > o.peak:
                out.append(self._peak(o, r))
        # trigger_frame: the frame that satisfied the rule (the event starts at its first frame above)
        line = self._line("start", event, s.frame, s.calibrated, o, trigger_frame=s.frame.index)
        return [*out, Change("start", o, line, at=s)]

    def _end(self, event: Event, f: Frame | None) -> list[Change]:
        ended, self.open = self.open, None
        if ended is None:
            return []
        return [Change("end", ended, self._line("end", event, f, None, ended))]

    def _line(self, kind: str, event: Event, f: Frame | None, score: float | None, o: OpenEvent, **extra) -> dict:
        frame = {"start": event.start, "end": event.end}.get(kind, f.index if f else event.end)
        pts = self._pts(frame) if f is None or kind != "update" else f.pts
        line = {"type": kind, "event": o.id, "source": self.source, "frame": frame, "pts": pts,
                "wall_time": iso(time.time()), "score": None if score is None else round(score, 4),
                "peak": round(float(o.peak), 4), "peak_frame": o.peak_frame, "branch": o.branch, "box": o.box,
                "snapshot": o.snapshot, "start_frame": event.start}
        if kind == "end":
            line.update(clip=o.clip, end_frame=event.end)
        line.update(extra)
        return line

    def _pts(self, index: int) -> float | None:
        """The pts of frame ``index`` when it is among the recent frames, else None."""
        for r in reversed(self.recent):
            if r.frame.index == index:
                return round(r.frame.pts, 3)
        return None
