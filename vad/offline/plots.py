"""Figures (matplotlib, PNG, no display needed): ROC curves and per-clip score timelines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from vad.atomic import atomic_path  # noqa: E402
from vad.metrics import label_events  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """One ROC curve per entry ``{label: (scores, labels)}``, AUC in the legend."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (s, y) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance (AUC 0.5)")
    ax.set(xlabel="false positive rate (normal frames flagged)", ylabel="true positive rate (anomalous frames found)",
           xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_timeline(scores: np.ndarray, path: Path, title: str, labels: np.ndarray | None = None,
                  threshold: float | None = None, raw: np.ndarray | None = None, fps: float | None = None,
                  events: Sequence = ()) -> Path:
    """Score over time for one clip, ground-truth anomalous spans shaded, the threshold as a line, the reported
    events (``.start``, ``.end`` inclusive) as bars along the bottom: what a user would be alarmed by."""
    t = np.arange(len(scores)) / fps if fps else np.arange(len(scores))
    fig, ax = plt.subplots(figsize=(9, 2.6))
    if labels is not None:
        for i, (a, b) in enumerate(label_events(labels)):
            lo = a / fps if fps else a - 0.5
            hi = b / fps if fps else b - 0.5
            ax.axvspan(lo, hi, color="tab:red", alpha=0.15, lw=0, label="ground-truth anomaly" if i == 0 else None)
    if raw is not None:
        ax.plot(t, raw, color="0.6", lw=0.8, label="raw")
    ax.plot(t, scores, color="tab:blue", lw=1.6, label="score")
    for i, e in enumerate(events):
        lo = e.start / fps if fps else e.start - 0.5
        hi = (e.end + 1) / fps if fps else e.end + 0.5
        ax.axvspan(lo, hi, ymin=0, ymax=0.06, color="tab:orange", lw=0, label="event (alarm)" if i == 0 else None)
    if threshold is not None:
        ax.axhline(threshold, color="tab:orange", lw=1.2, ls="--", label=f"threshold {threshold:.3g}")
    ax.set(xlabel="seconds" if fps else "frame", ylabel="anomaly score", title=title,
           xlim=(t[0], t[-1] if len(t) > 1 else 1))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)
