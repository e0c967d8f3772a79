"""From raw per-frame scores to comparable scores (:func:`normalise`) and events: offline (:func:`events`) and as the
live rule raises them, from the past alone (:class:`CausalRule`, :func:`causal_alarms`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter1d

from vad.config import ScoreNormalisation, choices
from vad.errors import InputError
from vad.runtime.reference import calibrate


def smooth(scores: np.ndarray, sigma: float) -> np.ndarray:
    """``(T,)`` -> ``(T,)`` Gaussian-smoothed over frames (``sigma`` in frames; 0 returns a copy); ``nearest`` at the
    ends keeps the clip's length and does not pull its first and last frames towards zero."""
    scores = np.asarray(scores, dtype=np.float64)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 frames; got {sigma}")
    if sigma == 0 or len(scores) < 2:
        return scores.copy()
    return gaussian_filter1d(scores, sigma, mode="nearest")


def minmax(scores: np.ndarray) -> np.ndarray:
    """Per-clip min-max to [0, 1]; a constant clip maps to all zeros."""
    scores = np.asarray(scores, dtype=np.float64)
    lo, hi = scores.min(), scores.max()
    return (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)


def normalise(scores: np.ndarray, how: ScoreNormalisation, normal_scores: np.ndarray | None = None,
              threshold: float | None = None) -> np.ndarray:
    """``scores`` normalised by rule ``how`` (``postprocess.normalisation``, checked when the config loads);
    ``calibrated`` needs the normal hold-out scores and the event threshold drawn from them."""
    if how == "minmax":
        return minmax(scores)
    if how == "calibrated":
        if normal_scores is None or threshold is None:
            raise InputError("calibrated normalisation needs the normal validation scores saved with the model "
                             "and the event threshold")
        return calibrate(scores, normal_scores, threshold)
    if how == "none":
        return np.asarray(scores, dtype=np.float64).copy()
    raise ValueError(f"unknown normalisation {how!r}; expected one of {choices(ScoreNormalisation)}")


BRANCH = "appearance"  # what raised an event of a model with one branch (STPM alone, RSTPM, MKD)


@dataclass(frozen=True)
class Event:
    """A run of above-threshold frames of one clip: frames ``start`` to ``end``, both inclusive. ``id`` is stable
    (the clip and the first frame): the review page, ``events.csv`` and verdicts name events by it."""

    clip: str
    start: int  # first frame above threshold
    end: int  # last frame above threshold (inclusive)
    peak: float
    peak_frame: int
    start_s: float | None
    end_s: float | None
    id: str = ""
    branch: str = BRANCH  # the branch whose score was higher at the peak (a fused model's), else BRANCH

    @classmethod
    def of(cls, clip: str, start: int, end: int, scores: np.ndarray, fps: float | None,
           branches: tuple[np.ndarray, tuple[str, ...]] | None = None) -> Event:
        """The event of frames ``start..end`` (inclusive) of ``clip`` with ``scores`` (the clip's); ``branches``:
        the clip's per-branch frame scores ``(T, k)`` and the branches' names."""
        k = start + int(np.argmax(scores[start : end + 1]))
        branch = BRANCH if branches is None else branches[1][int(np.argmax(branches[0][k]))]
        return cls(clip, int(start), int(end), float(scores[k]), int(k), start / fps if fps else None,
                   (end + 1) / fps if fps else None, event_id(clip, start), branch)


def event_id(clip: str, start: int) -> str:
    return f"{clip}-f{start}"


def events(scores: np.ndarray, threshold: float, clip: str = "", fps: float | None = None,
           min_frames: int = 1, branches: tuple[np.ndarray, tuple[str, ...]] | None = None) -> list[Event]:
    """Runs of frames with ``score > threshold`` (at least ``min_frames`` long) as :class:`Event` records.
    Times are ``frame / fps`` (start of the first frame, end of the last); ``None`` without a frame rate."""
    s = np.asarray(scores, dtype=np.float64)
    above = np.concatenate([[0], (s > threshold).astype(np.int8), [0]])
    d = np.diff(above)
    return [Event.of(clip, int(a), int(b - 1), s, fps, branches)
            for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True) if b - a >= min_frames]


class CausalRule:
    """Events as scores arrive, from the past alone (the live rule; :func:`causal_events` applies it offline).

    Each score is smoothed by the mean of the last ``window`` scores; an event opens once ``open_frames``
    consecutive smoothed scores are above ``threshold`` (it starts at the first of them) and closes once
    ``close_frames`` consecutive ones are not (it ends at the last frame above). :meth:`push` returns what changed:
    ``("start", event)`` when one opens and ``("end", event)`` when one closes; :meth:`reset` (a gap in the stream)
    forgets the past and closes an open event at the last frame pushed."""

    def __init__(self, threshold: float, window: int = 3, open_frames: int = 3, close_frames: int = 3,
                 clip: str = "", fps: float | None = None) -> None:
        if min(window, open_frames, close_frames) < 1:
            raise ValueError(f"window, open_frames, close_frames must be >= 1; got {window, open_frames, close_frames}")
        self.threshold, self.window, self.open_frames, self.close_frames = threshold, window, open_frames, close_frames
        self.clip, self.fps = clip, fps
        self.reset()

    def reset(self) -> list[tuple[str, Event]]:
        out = self._close() if getattr(self, "open", None) is not None else []
        self.recent: list[float] = []
        self.above_run = self.below_run = 0
        self.open: dict | None = None  # the open event: start, last frame above, peak, peak frame
        self.pending: dict | None = None  # a run above the threshold, not yet long enough to open
        self.last, self.smoothed = -1, float("nan")
        return out

    def push(self, frame: int, score: float) -> list[tuple[str, Event]]:
        self.recent = [*self.recent[-(self.window - 1):], float(score)] if self.window > 1 else [float(score)]
        smoothed = sum(self.recent) / len(self.recent)
        self.last, out = frame, []
        if smoothed > self.threshold:
            self.above_run, self.below_run = self.above_run + 1, 0
            if self.open is None and self.above_run == 1:
                self.pending = {"start": frame, "end": frame, "peak": smoothed, "peak_frame": frame}
            pending = self.open or self.pending
            pending["end"] = frame
            if smoothed > pending["peak"]:
                pending["peak"], pending["peak_frame"] = smoothed, frame
            if self.open is None and self.above_run >= self.open_frames:
                self.open = self.pending
                out.append(("start", self.event(frame)))
        else:
            self.above_run, self.below_run = 0, self.below_run + 1
            if self.open is not None and self.below_run >= self.close_frames:
                out.extend(self._close())
        self.smoothed = smoothed
        return out

    def event(self, now: int | None = None) -> Event:
        """The open event as it stands (``now``: the latest frame, the end of an event still open)."""
        o = self.open
        end = o["end"] if now is None else now
        fps = self.fps
        return Event(self.clip, o["start"], end, float(o["peak"]), o["peak_frame"], o["start"] / fps if fps else None,
                     (end + 1) / fps if fps else None, event_id(self.clip, o["start"]))

    def _close(self) -> list[tuple[str, Event]]:
        ended = self.event()
        self.open = None
        return [("end", ended)]


def causal_events(scores: np.ndarray, threshold: float, clip: str = "", fps: float | None = None,
                  window: int = 3, open_frames: int = 3, close_frames: int = 3,
                  branches: tuple[np.ndarray, tuple[str, ...]] | None = None) -> list[Event]:
    """The events :class:`CausalRule` raises over ``scores`` (raw), as a live watch would have; an event still open
    at the end closes at the last frame. Peaks are of the smoothed scores."""
    return [e for e, _ in causal_alarms(scores, threshold, clip, fps, window, open_frames, close_frames, branches)]


def causal_alarms(scores: np.ndarray, threshold: float, clip: str = "", fps: float | None = None,
                  window: int = 3, open_frames: int = 3, close_frames: int = 3,
                  branches: tuple[np.ndarray, tuple[str, ...]] | None = None) -> list[tuple[Event, int]]:
    """:func:`causal_events`, each with the frame at which the live rule raised it (the frame whose score opened
    it: ``open_frames - 1`` after the event's first frame, which the rule dates back to the first frame above)."""
    rule = CausalRule(threshold, window, open_frames, close_frames, clip, fps)
    raised, ended = [], []
    for t, x in enumerate(np.asarray(scores, dtype=np.float64)):
        for kind, e in rule.push(t, x):
            if kind == "start":
                raised.append(t)
            else:
                ended.append(e)
    ended += [e for kind, e in rule.reset() if kind == "end"]
    if branches is not None:
        ended = [replace(e, branch=branches[1][int(np.argmax(branches[0][e.peak_frame]))]) for e in ended]
    return list(zip(ended, raised, strict=True))


def event_frames(n: int, found: list[Event]) -> np.ndarray:
    """``(n,)`` bool: the frames inside ``found`` events (their ``end`` is inclusive)."""
    inside = np.zeros(n, dtype=bool)
    for e in found:
        inside[e.start : e.end + 1] = True
    return inside
