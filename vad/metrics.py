"""Frame-level metrics.

Conventions (state them with every number):
- micro AUC: all test frames of all clips concatenated, one ROC;
- macro AUC: the mean of per-clip AUCs. A clip whose frames are all normal or all anomalous has no AUC;
  such clips are skipped, and the number skipped is reported.
- alarm delay (:func:`alarm_delays`): per anomalous span (a maximal run of anomalous frames), the frames from its
  first frame until an alarm overlapping it is raised; AUC is blind to it (arXiv 2505.19022 proposes a
  latency-aware AP for the same reason).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from vad.errors import InputError


def _concat(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    missing = sorted(set(labels) - set(scores))
    if missing:
        raise InputError(f"no scores for labelled clip(s) {missing[:5]}")
    for name, y in labels.items():
        if len(scores[name]) != len(y):
            raise InputError(f"clip {name}: {len(scores[name])} scores for {len(y)} labelled frames")
    names = sorted(labels)
    return np.concatenate([scores[n] for n in names]), np.concatenate([labels[n] for n in names]).astype(bool)


def micro_auc(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> float:
    s, y = _concat(scores, labels)
    if y.all() or not y.any():
        raise InputError("micro AUC needs both normal and anomalous frames in the labels")
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
        raise InputError("macro AUC needs at least one clip with both normal and anomalous frames")
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


def average_precision(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> float:
    """Frame-level average precision over all clips (anomalous = positive)."""
    from sklearn.metrics import average_precision_score

    s, y = _concat(scores, labels)
    return float(average_precision_score(y, s))


def equal_error_rate(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> float:
    """The error rate where the false-positive rate equals the miss rate (interpolated on the ROC)."""
    from sklearn.metrics import roc_curve

    s, y = _concat(scores, labels)
    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1 - tpr
    i = int(np.flatnonzero(fnr <= fpr)[0]) if (fnr <= fpr).any() else len(fpr) - 1
    if i == 0:
        return float(fpr[0])
    # linear interpolation between points i-1 and i, where fnr - fpr changes sign
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def best_f1_threshold(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """``(threshold, F1)`` maximising frame-level F1 on the labels: test-informed, for reference only."""
    from sklearn.metrics import precision_recall_curve

    s, y = _concat(scores, labels)
    p, r, th = precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0)[:-1]
    k = int(np.argmax(f1))
    return float(th[k]), float(f1[k])


def pixel_auroc(maps: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], max_pixels: int = 2_000_000,
                seed: int = 0) -> float:
    """Pixel-level AUROC of anomaly maps ``(T, h, w)`` against pixel masks ``(T, H, W)``.

    Masks are block-reduced to the map grid (a map cell is anomalous when any of its pixels is), and at most
    ``max_pixels`` cells are drawn at random (seeded) to bound memory.
    """
    rng = np.random.default_rng(seed)
    total = sum(m.size for m in maps.values())
    keep = min(1.0, max_pixels / max(total, 1))
    ss, yy = [], []
    for name, amap in maps.items():
        mask = np.asarray(masks[name]).astype(bool)
        if mask.shape[0] != amap.shape[0]:
            raise InputError(f"clip {name}: {amap.shape[0]} maps for {mask.shape[0]} masks")
        cell = _reduce_mask(mask, amap.shape[1:])
        pick = rng.random(amap.shape) < keep
        ss.append(amap[pick].astype(np.float32))
        yy.append(cell[pick])
    s, y = np.concatenate(ss), np.concatenate(yy)
    if y.all() or not y.any():
        raise InputError("pixel AUROC needs both normal and anomalous pixels")
    return float(roc_auc_score(y, s))


def _reduce_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(T, H, W)`` bool -> ``(T, h, w)``: a cell is set when any pixel of its block is."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(mask.astype(np.float32)).unsqueeze(1)
    return F.adaptive_max_pool2d(t, size).squeeze(1).numpy() > 0


def alarm_rates(inside: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], false_events: int,
                fps: Mapping[str, float | None]) -> dict:
    """What a user of the default threshold sees on labelled clips. ``inside``: per clip, the frames inside
    reported events; ``false_events``: events with no anomalous frame; ``fps``: per clip (``None``: unknown).

    Returns the fraction of normal frames inside events, the fraction of anomalous frames caught (inside
    events), and false alarm events per hour of normal footage (``None`` if a clip has no frame rate)."""
    s, y = _concat({n: np.asarray(inside[n], dtype=float) for n in labels}, labels)
    s = s.astype(bool)
    seconds = [np.sum(~np.asarray(y_, dtype=bool)) / fps[n] if fps.get(n) else None for n, y_ in labels.items()]
    hours = None if any(x is None for x in seconds) else float(sum(seconds)) / 3600
    return {
        "normal_frames_in_events": float(s[~y].mean()) if (~y).any() else None,
        "anomalous_frames_caught": float(s[y].mean()) if y.any() else None,
        "false_alarm_events": int(false_events),
        "false_alarm_events_per_hour": false_events / hours if hours else None,
        "normal_frames": int((~y).sum()), "anomalous_frames": int(y.sum()),
    }


def alarm_delays(labels: np.ndarray, alarms: Sequence[tuple[int, int, int]]) -> list[tuple[int, int] | None]:
    """Per anomalous span of the ``(T,)`` labels (:func:`label_events` order), how late the first alarm overlapping
    it came, or ``None`` (missed: no alarm has a frame in the span).

    ``alarms``: ``(first frame, last frame (inclusive), frame it was raised)`` each, in the order they started (a
    live rule raises an event some frames after the first frame it covers; an offline rule's is its first frame).
    Returns ``(frames from the span's first frame to the raise, frames to the alarm's first frame)``, each 0 when
    that came at or before the span's first frame (the alarm was already on)."""
    out: list[tuple[int, int] | None] = []
    for a, b in label_events(labels):  # the span is frames a..b-1
        hit = next(((s, r) for s, e, r in alarms if s < b and e >= a), None)
        out.append(None if hit is None else (max(0, hit[1] - a), max(0, hit[0] - a)))
    return out


def delay_summary(delays: Mapping[str, Sequence[tuple[int, int] | None]], fps: Mapping[str, float | None]) -> dict:
    """Summary of :func:`alarm_delays` over clips: spans, caught, missed, and the median and worst delay of the
    caught spans to the raise in frames and seconds (``None`` when nothing was caught, or seconds when a clip with
    a caught span has no frame rate), and to the alarm's first frame in frames."""
    caught = [(d, fps.get(n)) for n, per in delays.items() for d in per if d is not None]
    spans = sum(len(per) for per in delays.values())
    frames = [d[0] for d, _ in caught]
    seconds = None if any(not f for _, f in caught) else [d[0] / f for d, f in caught]
    start = [d[1] for d, _ in caught]
    med = lambda x: float(np.median(x)) if x else None  # noqa: E731
    worst = lambda x: max(x) if x else None  # noqa: E731
    return {"spans": spans, "caught": len(caught), "missed": spans - len(caught),
            "median_frames": med(frames), "worst_frames": worst(frames),
            "median_s": med(seconds) if seconds is not None else None,
            "worst_s": worst(seconds) if seconds is not None else None,
            "median_frames_to_event_start": med(start), "worst_frames_to_event_start": worst(start)}
