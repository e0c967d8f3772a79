"""From raw per-frame scores to comparable scores and events.

- :func:`smooth`: temporal Gaussian, sigma in frames (0 = off); ``mode="nearest"`` keeps the clip length and
  does not pull the first/last frames towards zero.
- :func:`minmax`: per-clip min-max to [0, 1] (the benchmark convention; it uses the clip's own range).
- :func:`calibrate`: divide by a high percentile of *normal* (held-out training) frame scores, so clips of
  unlabelled footage are comparable without seeing their own range: 1.0 = the q-th percentile of normal. The
  evaluate stage passes the normal scores unsmoothed (smoothing would only lower their peaks).
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


def calibrate(scores: np.ndarray, normal_scores: np.ndarray, q: float = 99.0) -> np.ndarray:
    """Scores divided by the ``q``-th percentile of ``normal_scores`` (normal hold-out frames)."""
    ref = float(np.percentile(np.asarray(normal_scores, dtype=np.float64), q))
    if not ref > 0:
        raise ValueError(f"the {q}th percentile of normal scores is {ref}; expected a positive reference")
    return np.asarray(scores, dtype=np.float64) / ref


def normalise(scores: np.ndarray, how: ScoreNormalisation, normal_scores: np.ndarray | None = None,
              q: float = 99.0) -> np.ndarray:
    """``scores`` normalised by rule ``how`` (``postprocess.normalisation``, checked when the config loads)."""
    if how == "minmax":
        return minmax(scores)
    if how == "calibrated":
        if normal_scores is None:
            raise ValueError("calibrated normalisation needs the normal validation scores saved with the model")
        return calibrate(scores, normal_scores, q)
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
