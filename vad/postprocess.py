"""From raw per-frame scores to comparable scores and events.

- :func:`smooth`: temporal Gaussian, sigma in frames (0 = off); ``mode="nearest"`` keeps the clip length and
  does not pull the first/last frames towards zero.
- :func:`minmax`: per-clip min-max to [0, 1] (the benchmark convention; it uses the clip's own range).
- :func:`normalise`: min-max, or calibrated: 0 at the median normal frame score, 1.0 at the event threshold (both
  from the model's normal reference, :mod:`vad.reference`), so clips of unlabelled footage are comparable
  without seeing their own range, and 1.0 means "at the threshold" everywhere.
- :func:`events`: runs of above-threshold frames as :class:`Event` records (first and last frame, both inclusive)
  with their peak score and times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from vad.config import ScoreNormalisation, choices
from vad.errors import InputError
from vad.reference import calibrate


def smooth(scores: np.ndarray, sigma: float) -> np.ndarray:
    """``(T,)`` -> ``(T,)`` Gaussian-smoothed over frames (``sigma`` in frames; 0 returns a copy)."""
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


@dataclass(frozen=True)
class Event:
    """A run of above-threshold frames of one clip: frames ``start`` to ``end``, both inclusive."""

    clip: str
    start: int  # first frame above threshold
    end: int  # last frame above threshold (inclusive)
    peak: float
    peak_frame: int
    start_s: float | None
    end_s: float | None


def events(scores: np.ndarray, threshold: float, clip: str = "", fps: float | None = None,
           min_frames: int = 1) -> list[Event]:
    """Runs of frames with ``score > threshold`` (at least ``min_frames`` long) as :class:`Event` records.
    Times are ``frame / fps`` (start of the first frame, end of the last); ``None`` without a frame rate."""
    s = np.asarray(scores, dtype=np.float64)
    above = np.concatenate([[0], (s > threshold).astype(np.int8), [0]])
    d = np.diff(above)
    out = []
    for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True):
        if b - a < min_frames:
            continue
        k = a + int(np.argmax(s[a:b]))
        out.append(Event(clip, int(a), int(b - 1), float(s[k]), int(k),
                         a / fps if fps else None, b / fps if fps else None))
    return out


def event_frames(n: int, found: list[Event]) -> np.ndarray:
    """``(n,)`` bool: the frames inside ``found`` events (their ``end`` is inclusive)."""
    inside = np.zeros(n, dtype=bool)
    for e in found:
        inside[e.start : e.end + 1] = True
    return inside
