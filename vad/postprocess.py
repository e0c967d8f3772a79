"""From raw per-frame scores to comparable scores and events.

- :func:`smooth`: temporal Gaussian, sigma in frames (0 = off); ``mode="nearest"`` keeps the clip length and
  does not pull the first/last frames towards zero.
- :func:`minmax`: per-clip min-max to [0, 1] (the benchmark convention; it uses the clip's own range).
- :func:`event_threshold`: a high percentile of *normal* (held-out training) frame scores, unsmoothed (smoothing
  would only lower their peaks); applied to smoothed scores.
- :func:`calibrate`: 0 at the median normal frame score, 1.0 at the event threshold, so clips of unlabelled
  footage are comparable without seeing their own range, and 1.0 means "at the threshold" everywhere.
- :func:`events`: contiguous above-threshold frames as (start, stop) runs with peak score and times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from vad.config import ScoreNormalisation, choices


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


def event_threshold(normal_scores: np.ndarray, percentile: float) -> float:
    """The event threshold: the ``percentile``-th percentile of a model's normal hold-out frame scores (training
    data only; ``eval.threshold_percentile``). The one reference for events, calibrated scores, plots and videos."""
    normal = np.asarray(normal_scores, dtype=np.float64)
    if not len(normal):
        raise ValueError("no normal hold-out scores to draw the event threshold from")
    return float(np.percentile(normal, percentile))


def calibrate(scores: np.ndarray, normal_scores: np.ndarray, threshold: float) -> np.ndarray:
    """Scores on the threshold's scale: 0 at the median normal hold-out frame score, 1 at the event threshold
    (any sign of scores: RSTPM's are log-odds)."""
    low = float(np.median(np.asarray(normal_scores, dtype=np.float64)))
    if not threshold > low:
        raise ValueError(f"the event threshold {threshold:.6g} is not above the median normal score {low:.6g}: "
                         "the hold-out scores are constant; calibrated normalisation needs a spread")
    return (np.asarray(scores, dtype=np.float64) - low) / (threshold - low)


def normalise(scores: np.ndarray, how: ScoreNormalisation, normal_scores: np.ndarray | None = None,
              threshold: float | None = None) -> np.ndarray:
    """``scores`` normalised by rule ``how`` (``postprocess.normalisation``, checked when the config loads);
    ``calibrated`` needs the normal hold-out scores and the event threshold drawn from them."""
    if how == "minmax":
        return minmax(scores)
    if how == "calibrated":
        if normal_scores is None or threshold is None:
            raise ValueError("calibrated normalisation needs the normal validation scores saved with the model "
                             "and the event threshold")
        return calibrate(scores, normal_scores, threshold)
    if how == "none":
        return np.asarray(scores, dtype=np.float64).copy()
    raise ValueError(f"unknown normalisation {how!r}; expected one of {choices(ScoreNormalisation)}")


@dataclass(frozen=True)
class Event:
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
