"""Frame-level metrics.

Conventions (state them with every number):
- micro AUC: all test frames of all clips concatenated, one ROC;
- macro AUC: the mean of per-clip AUCs. A clip whose frames are all normal or all anomalous has no AUC;
  such clips are skipped, and the number skipped is reported.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.metrics import roc_auc_score


def _concat(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    missing = sorted(set(labels) - set(scores))
    if missing:
        raise ValueError(f"no scores for labelled clip(s) {missing[:5]}")
    for name, y in labels.items():
        if len(scores[name]) != len(y):
            raise ValueError(f"clip {name}: {len(scores[name])} scores for {len(y)} labelled frames")
    names = sorted(labels)
    return np.concatenate([scores[n] for n in names]), np.concatenate([labels[n] for n in names]).astype(bool)


def micro_auc(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> float:
    s, y = _concat(scores, labels)
    if y.all() or not y.any():
        raise ValueError("micro AUC needs both normal and anomalous frames in the labels")
    return float(roc_auc_score(y, s))


def clip_aucs(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, float | None]:
    """Per-clip AUC; ``None`` for single-class clips (undefined)."""
    _concat(scores, labels)
    return {n: (float(roc_auc_score(y.astype(bool), scores[n])) if 0 < y.sum() < len(y) else None)
            for n, y in sorted(labels.items())}


def macro_auc(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> tuple[float, int]:
    """``(mean per-clip AUC over two-class clips, number of single-class clips skipped)``."""
    per = clip_aucs(scores, labels)
    vals = [v for v in per.values() if v is not None]
    if not vals:
        raise ValueError("macro AUC needs at least one clip with both normal and anomalous frames")
    return float(np.mean(vals)), len(per) - len(vals)


def label_events(labels: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous anomalous runs ``[(start, stop), ...]`` of a ``(T,)`` label vector."""
    y = np.concatenate([[0], np.asarray(labels).astype(np.int8), [0]])
    d = np.diff(y)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def event_aucs(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, float]:
    """AUC of each labelled event's frames against every normal frame of every clip: which anomalies are found."""
    s, y = _concat(scores, labels)
    normal = s[~y]
    out = {}
    for name in sorted(labels):
        for a, b in label_events(labels[name]):
            ev = scores[name][a:b]
            yy = np.r_[np.zeros(len(normal)), np.ones(len(ev))]
            out[f"{name}[{a}:{b}]"] = float(roc_auc_score(yy, np.r_[normal, ev]))
    return out
