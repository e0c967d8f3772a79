"""The evaluate stage: a scored run folder -> ``metrics.json``, ``events.csv``/``events.json`` and plots.

Reads only the files the score stage wrote (``clips.json``, ``scores/``, ``labels/``, ``normal_scores/``,
``maps/``); never a model. Every report states the smoothing sigma, the normalisation and the AUC kinds.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vad.atomic import write_text
from vad.config import EvalConfig, PostprocessConfig
from vad.metrics import (
    average_precision,
    best_f1_threshold,
    clip_aucs,
    equal_error_rate,
    event_aucs,
    macro_auc,
    micro_auc,
    pixel_auroc,
)
from vad.postprocess import events, normalise, smooth
from vad.runs import ClipRecord, RunFolder, read_manifest

AUC_NOTE = ("micro: one ROC over all test frames concatenated; macro: mean of per-clip AUCs, clips with a single "
            "class skipped (count in frame_auc_macro_skipped)")


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


@dataclass
class ScoredRun:
    """What the score stage left in a run folder, post-processed: per clip raw, smoothed and final scores,
    labels (labelled clips), and per model the normal hold-out scores and the event threshold drawn from them."""

    run: Path
    manifest: dict[str, ClipRecord]
    raw: dict[str, np.ndarray]  # clip -> (T,) scores as written by the score stage
    smoothed: dict[str, np.ndarray]  # clip -> temporally smoothed
    final: dict[str, np.ndarray]  # clip -> smoothed and normalised
    labels: dict[str, np.ndarray]  # labelled clip -> (T,) frame labels
    normal: dict[str, np.ndarray]  # model reference -> normal hold-out frame scores
    thresholds: dict[str, float]  # model reference -> event threshold

    def threshold(self, clip: str) -> float:
        return self.thresholds[self.manifest[clip].reference]

    def fps(self, clip: str, default: float | None = None) -> float | None:
        return self.manifest[clip].fps or default


def load_scored(run: Path | str, post: PostprocessConfig, ev: EvalConfig) -> ScoredRun:
    """Read ``clips.json``, ``scores/``, ``labels/`` and ``normal_scores/`` of ``run`` and post-process."""
    folder = RunFolder(run)
    if not folder.manifest.is_file():
        raise FileNotFoundError(f"{folder.manifest} not found: score the run first (vad score --run {run} ...)")
    manifest = read_manifest(folder, parts=False)
    raw, normal, labels = {}, {}, {}
    for name, info in manifest.items():
        path = folder.scores(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: scoring of clip {name} did not finish; re-run vad score")
        raw[name] = _finite(np.load(path).astype(np.float64), path)
        if info.reference not in normal:
            ref_path = folder.normal_scores(info.reference)
            normal[info.reference] = _finite(np.load(ref_path).astype(np.float64), ref_path)
        if info.labelled:
            labels[name] = np.load(folder.labels(name))
    smoothed = {name: smooth(v, post.sigma) for name, v in raw.items()}
    final = {name: normalise(v, post.normalisation, normal[manifest[name].reference], post.reference_percentile)
             for name, v in smoothed.items()}
    # Threshold from normal data only: a percentile of the hold-out frames' raw scores (per model), applied to
    # the smoothed scores (smoothing only lowers peaks, so this errs towards fewer false alarms).
    thresholds = {ref: float(np.percentile(v, ev.threshold_percentile)) for ref, v in normal.items()}
    return ScoredRun(folder.root, manifest, raw, smoothed, final, labels, normal, thresholds)


def _finite(scores: np.ndarray, path: Path) -> np.ndarray:
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} of {len(scores)} scores are NaN or infinite (first at frame "
                         f"{int(np.flatnonzero(bad)[0])}): the model's output is broken (a diverged training?); "
                         "retrain, then score again")
    return scores


def clip_events(s: ScoredRun, name: str, ev: EvalConfig) -> list:
    """Above-threshold events of clip ``name`` (smoothed scores, the model's normal-data threshold)."""
    return events(s.smoothed[name], s.threshold(name), clip=name, fps=s.fps(name, ev.fps),
                  min_frames=ev.min_event_frames)


def evaluate_run(run: Path | str, post: PostprocessConfig, ev: EvalConfig, progress: bool = True) -> dict:
    """Post-process the scores of ``run``, compute metrics (labelled clips), events and plots; return metrics."""
    s = load_scored(run, post, ev)
    run, manifest, thresholds = s.run, s.manifest, s.thresholds
    raw, smoothed, final, labels = s.raw, s.smoothed, s.final, s.labels
    found = [e for name in manifest for e in clip_events(s, name, ev)]

    metrics: dict = {
        "sigma": post.sigma, "normalisation": post.normalisation, "auc_kinds": AUC_NOTE,
        "postprocess": asdict(post), "eval": asdict(ev), "clips": len(manifest), "labelled_clips": len(labels),
        "threshold": {"rule": f"{ev.threshold_percentile}th percentile of normal hold-out frame scores "
                              "(training data only)", "values": {k: _r(v) for k, v in thresholds.items()}},
        "events": len(found),
    }
    if labels:
        lab = labels
        pick = lambda d: {n: d[n] for n in lab}  # noqa: E731  (labelled clips only)
        macro, skipped = macro_auc(pick(final), lab)
        metrics.update({
            "frame_auc_micro": _r(micro_auc(pick(final), lab)),
            "frame_auc_macro": _r(macro), "frame_auc_macro_skipped": skipped,
            "frame_ap": _r(average_precision(pick(final), lab)),
            "eer": _r(equal_error_rate(pick(final), lab)),
            "frame_auc_micro_raw": _r(micro_auc(pick(raw), lab)),
            "frame_auc_macro_raw": _r(macro_auc(pick(raw), lab)[0]),
            "frame_auc_micro_smoothed": _r(micro_auc(pick(smoothed), lab)),
            "frame_auc_macro_smoothed": _r(macro_auc(pick(smoothed), lab)[0]),
        })
        th, f1 = best_f1_threshold(pick(smoothed), lab)
        metrics["threshold"]["best_f1_test_informed"] = {"value": _r(th), "f1": _r(f1),
                                                         "note": "chosen on the test labels; reference only"}
        per_raw, per_final = clip_aucs(pick(raw), lab), clip_aucs(pick(final), lab)
        metrics["per_clip"] = {n: {"frames": len(lab[n]), "anomalous": int(lab[n].sum()),
                                   "auc_raw": _r(per_raw[n]), "auc": _r(per_final[n])} for n in lab}
        metrics["per_event_auc_raw"] = {k: _r(v) for k, v in event_aucs(pick(raw), lab).items()}
        scenes = sorted({manifest[n].scene for n in lab if manifest[n].scene})
        if len(scenes) > 1:
            metrics["per_scene"] = {}
            for sc in scenes:
                names = [n for n in lab if manifest[n].scene == sc]
                y = {n: lab[n] for n in names}
                if any(v.any() for v in y.values()) and not all(v.all() for v in y.values()):
                    metrics["per_scene"][sc] = {"frame_auc_micro": _r(micro_auc({n: final[n] for n in names}, y))}
        pix, covered = _pixel_metric(run, manifest, lab, ev)
        if pix is not None:
            metrics["pixel_auroc"] = _r(pix)
            metrics["pixel_auroc_clips"] = {"with_pixel_ground_truth": covered, "labelled": len(lab)}

    _write_events(found, run)
    untimed = sorted({e.clip for e in found if e.start_s is None})
    if untimed and progress:
        print(f"note: events of frame-folder clips have no times in events.csv ({', '.join(untimed[:3])}"
              f"{', ...' if len(untimed) > 3 else ''}): give their frame rate with --set eval.fps=FPS")
    if ev.plots:
        _plots(run, manifest, raw, smoothed, final, labels, thresholds, post, ev)
    write_text(json.dumps(metrics, indent=2), run / "metrics.json")
    if progress:
        if labels:
            print(f"frame AUC micro {metrics['frame_auc_micro']:.4f}, macro {metrics['frame_auc_macro']:.4f} "
                  f"(sigma {post.sigma}, {post.normalisation}); raw micro {metrics['frame_auc_micro_raw']:.4f}; "
                  f"{len(found)} events -> {run / 'metrics.json'}")
        else:
            print(f"{len(found)} events over {len(manifest)} clips (no labels) -> {run / 'events.csv'}")
    return metrics


def _pixel_metric(run: Path, manifest: dict, labels: dict, ev: EvalConfig) -> tuple[float | None, int]:
    """Pixel AUROC over the labelled clips that have pixel ground truth and saved maps (UCSD Ped1 has masks for
    some clips only), and how many clips that is."""
    from vad.io.masks import read_pixel_mask

    names = [n for n in labels if manifest[n].pixel_mask and (run / "maps" / f"{n}.npy").is_file()]
    if not names:
        return None, 0
    maps, masks = {}, {}
    for n in names:
        maps[n] = np.load(run / "maps" / f"{n}.npy")
        masks[n] = read_pixel_mask(Path(manifest[n].pixel_mask), manifest[n].frames, n)
    return pixel_auroc(maps, masks, max_pixels=ev.pixel_max), len(names)


def _write_events(found: list, run: Path) -> None:
    fields = ["clip", "start", "end", "peak", "peak_frame", "start_s", "end_s"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for e in found:
        writer.writerow(asdict(e))
    write_text(buf.getvalue(), run / "events.csv")
    write_text(json.dumps([asdict(e) for e in found], indent=2), run / "events.json")


def _plots(run: Path, manifest: dict, raw: dict, smoothed: dict, final: dict, labels: dict, thresholds: dict,
           post: PostprocessConfig, ev: EvalConfig) -> None:
    from vad.plots import plot_roc, plot_timeline

    if labels:
        y = np.concatenate([labels[n] for n in labels])
        cat = lambda d: np.concatenate([d[n] for n in labels])  # noqa: E731
        plot_roc({"raw": (cat(raw), y), f"smoothed (sigma {post.sigma})": (cat(smoothed), y),
                  f"smoothed + {post.normalisation}": (cat(final), y)},
                 run / "plots" / "roc.png", "frame-level ROC, micro (all test frames)")
    for name, info in manifest.items():
        plot_timeline(smoothed[name], run / "plots" / f"timeline_{name}.png", f"{name}: anomaly score",
                      labels=labels.get(name), threshold=thresholds[info.reference], raw=raw[name],
                      fps=info.fps or ev.fps)
