"""The evaluate stage: a scored run folder -> ``metrics.json``, ``events.csv``/``events.json``, plots and the review
page (``review.html``, :mod:`vad.review`).

Reads only the files the score stage wrote (the manifest, scores, labels, normal references, maps); never a
model. Every report states the smoothing sigma, the normalisation and the AUC kinds (``metrics.json``'s
``protocol`` names what each AUC and alarm-delay key means). Scores whose source changed since they were made are
refused (score again), as the renderer refuses them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vad.atomic import write_text
from vad.config import EvalConfig, PostprocessConfig
from vad.errors import InputError, VadError
from vad.io.decode import as_clip
from vad.io.masks import read_pixel_mask
from vad.metrics import (
    alarm_delays,
    alarm_rates,
    average_precision,
    best_f1_threshold,
    clip_aucs,
    delay_summary,
    equal_error_rate,
    event_aucs,
    macro_auc,
    micro_auc,
    pixel_auroc,
)
from vad.offline.plots import plot_roc, plot_timeline
from vad.review.page import write_review
from vad.runs import ClipRecord, RunFolder, RunFolderError, read_manifest, source_fingerprint
from vad.runtime.postprocess import Event, causal_alarms, event_frames, events, minmax, normalise, smooth
from vad.runtime.reference import NormalReference
from vad.text import pct

log = logging.getLogger(__name__)

AUC_NOTE = ("micro: one ROC over all test frames concatenated; macro: mean of per-clip AUCs, clips with a single "
            "class skipped (count in frame_auc_macro_skipped); frame_auc_micro_raw: raw scores, no smoothing, no "
            "normalisation; frame_auc_micro_minmax: raw scores min-max normalised per test clip (the MNAD/FFP/AED-MAE "
            "convention; each clip's own range, so not causal); frame_auc_micro_smoothed_minmax: smoothed, then per-"
            "clip min-max; frame_auc_micro: smoothed, then postprocess.normalisation; 'protocol' defines every key")


def protocol(post: PostprocessConfig, ev: EvalConfig) -> dict[str, str | float]:
    """What each AUC and alarm-delay key of ``metrics.json`` means, with the sigma and normalisation used."""
    sm = f"Gaussian smoothing over frames, sigma {post.sigma:g} (centred: reads the future; 0 = off)"
    mm = "min-max normalised per test clip (each clip's own min and max: uses the whole clip, not causal)"
    delay = ("per ground-truth anomalous span (a maximal run of anomalous frames of a test clip): frames (and seconds "
             "at the clip's frame rate, else eval.fps) from the span's first frame to the raise of the first event "
             "overlapping the span, 0 when it was raised at or before the span's first frame (the alarm already on); a "
             "span no event overlaps is missed. median/worst over the caught spans. ")
    return {
        "sigma": post.sigma, "normalisation": post.normalisation,
        "frame_auc_micro_raw": "micro AUC on the raw per-frame scores: no smoothing, no normalisation",
        "frame_auc_micro_minmax": f"micro AUC on the raw scores {mm}; no smoothing",
        "frame_auc_micro_smoothed": f"micro AUC after {sm}; no normalisation",
        "frame_auc_micro_smoothed_minmax": f"micro AUC after {sm}, then {mm} (the published protocol of MNAD, FFP, "
                                           "AED-MAE; their sigmas differ)",
        "frame_auc_micro": f"micro AUC after {sm}, then postprocess.normalisation={post.normalisation!r} (equals "
                           "frame_auc_micro_smoothed_minmax under minmax)",
        "frame_auc_macro": "mean of per-clip AUCs on frame_auc_micro's scores, single-class clips skipped (count in "
                           "frame_auc_macro_skipped); min-max and calibrated are increasing within a clip, so it "
                           "equals frame_auc_macro_smoothed",
        "frame_auc_macro_raw": "mean of per-clip AUCs on the raw scores",
        "frame_auc_macro_smoothed": f"mean of per-clip AUCs after {sm}",
        "alarm_delay": delay + "The live rule (vad.runtime.postprocess.CausalRule: the mean of the last "
                       f"postprocess.causal_window ({post.causal_window}) raw scores against the normal-data "
                       f"threshold) raises an event once eval.min_event_frames ({ev.min_event_frames}) consecutive "
                       "means are above it and dates it back to the first of them: *_frames and *_s count to the "
                       "raise, *_frames_to_event_start to that first frame. AUC ignores when an alarm comes (arXiv "
                       "2505.19022 proposes a latency-aware AP).",
        "alarm_delay_offline": delay + "The offline rule (runs of the smoothed scores above the threshold, at least "
                               "eval.min_event_frames long) sees the whole clip: raised = its first frame, which the "
                               "centred smoothing can put before the anomaly.",
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


@dataclass
class ScoredRun:
    """What the score stage left in a run folder, post-processed: per clip raw, smoothed and final scores,
    labels (labelled clips), and per normal reference (a model under one scoring setting) the reference and the
    event threshold drawn from it."""

    folder: RunFolder
    manifest: dict[str, ClipRecord]
    raw: dict[str, np.ndarray]  # clip -> (T,) scores as written by the score stage
    smoothed: dict[str, np.ndarray]  # clip -> temporally smoothed
    final: dict[str, np.ndarray]  # clip -> smoothed and normalised
    labels: dict[str, np.ndarray]  # labelled clip -> (T,) frame labels
    references: dict[str, NormalReference]  # reference name -> the normal reference
    thresholds: dict[str, float]  # reference name -> event threshold
    normalisation: str = "none"  # how ``final`` was made (postprocess.normalisation)
    causal_window: int = 3  # the live rule's smoothing (postprocess.causal_window)
    branches: dict[str, np.ndarray] = field(default_factory=dict)  # clip -> (T, k) branch frame scores (fused models)

    @property
    def run(self) -> Path:
        return self.folder.root

    def reference(self, clip: str) -> NormalReference:
        return self.references[self.manifest[clip].reference]

    def threshold(self, clip: str) -> float:
        return self.thresholds[self.manifest[clip].reference]

    def shown(self, clip: str) -> tuple[np.ndarray, float]:
        """``(scores, threshold)`` as a person is shown them: calibrated (threshold 1.0) when the run's
        normalisation is, else smoothed with the threshold in the model's units (events are the same either way)."""
        if self.normalisation == "calibrated":
            return self.final[clip], 1.0
        return self.smoothed[clip], self.threshold(clip)

    def fps(self, clip: str, default: float | None = None) -> float | None:
        return self.manifest[clip].fps or default

    def branch_scores(self, clip: str) -> tuple[np.ndarray, tuple[str, ...]] | None:
        """``(per-branch frame scores (T, k), branch names)`` of a fused model's clip, else ``None``."""
        names = self.reference(clip).branches
        return (self.branches[clip], names) if clip in self.branches and names else None


def load_scored(run: Path | str, post: PostprocessConfig, ev: EvalConfig, progress: bool = True) -> ScoredRun:
    """Read the manifest, scores, labels and normal references of ``run`` and post-process. A clip whose source
    changed since it was scored is an error (its scores are stale); one whose source is gone is a note."""
    folder = RunFolder(run)
    if not folder.manifest.is_file():
        raise RunFolderError(f"{folder.manifest} not found: score the run first (vad score --run {run} ...)")
    manifest = read_manifest(folder, parts=False)
    _check_sources(manifest, folder, progress)
    raw, references, labels = {}, {}, {}
    for name, info in manifest.items():
        path = folder.scores(name)
        if not path.is_file():
            raise RunFolderError(f"{path} missing: scoring of clip {name} did not finish; re-run vad score")
        raw[name] = _finite(np.load(path).astype(np.float64), path)
        if info.reference not in references:
            ref = NormalReference.load(folder.normal_scores(info.reference))
            _finite(ref.scores, folder.normal_scores(info.reference))
            references[info.reference] = ref
        if info.labelled:
            labels[name] = np.load(folder.labels(name))
    branches = {n: np.load(folder.branches(n)) for n in manifest if folder.branches(n).is_file()}
    smoothed = {name: smooth(v, post.sigma) for name, v in raw.items()}
    # Threshold from normal data only: a percentile of the hold-out frames' raw scores (per reference), applied to
    # the smoothed scores (smoothing only lowers peaks, so this errs towards fewer false alarms).
    thresholds = {k: ref.threshold(ev.threshold_percentile) for k, ref in references.items()}
    final = {name: normalise(v, post.normalisation, references[manifest[name].reference].scores,
                             thresholds[manifest[name].reference]) for name, v in smoothed.items()}
    return ScoredRun(folder, manifest, raw, smoothed, final, labels, references, thresholds, post.normalisation,
                     post.causal_window, branches)


def _check_sources(manifest: dict[str, ClipRecord], folder: RunFolder, progress: bool) -> None:
    changed, gone = [], []
    for name, info in manifest.items():
        try:
            now = source_fingerprint(as_clip(Path(info.path)))
        except (OSError, VadError):
            gone.append(name)
            continue
        if now != info.source:
            changed.append(name)
    if changed:  # what was made from them no longer shows their footage either
        gone_now = folder.invalidate(changed)
        removed = f"; removed {len(gone_now)} output(s) made from them" if gone_now else ""
        first = manifest[changed[0]]
        raise InputError(f"the source of clip(s) {', '.join(changed[:5])} changed since they were scored (e.g. "
                         f"{first.path}); their scores are stale{removed}: score again "
                         f"(vad score --run {folder.root} ...)")
    if gone and progress:
        log.info(f"note: the source of clip(s) {', '.join(gone[:5])}{', ...' if len(gone) > 5 else ''} is gone; "
                 "evaluating their scores as they were made")


def _finite(scores: np.ndarray, path: Path) -> np.ndarray:
    bad = ~np.isfinite(scores)
    if bad.any():
        raise InputError(f"{path}: {int(bad.sum())} of {len(scores)} scores are NaN or infinite (first at frame "
                         f"{int(np.flatnonzero(bad)[0])}): the model's output is broken (a diverged training?); "
                         "retrain, then score again")
    return scores


def clip_events(s: ScoredRun, name: str, ev: EvalConfig, rule: str | None = None) -> list[Event]:
    """Events of clip ``name`` at the model's normal-data threshold by ``rule`` (default ``eval.rule``): offline,
    runs of smoothed scores above it; causal, what the live rule raises
    (:class:`~vad.runtime.postprocess.CausalRule`)."""
    return [e for e, _ in clip_alarms(s, name, ev, rule)]


def clip_alarms(s: ScoredRun, name: str, ev: EvalConfig, rule: str | None = None) -> list[tuple[Event, int]]:
    """:func:`clip_events`, each with the frame at which it was raised: the live rule's, some frames after the
    event's first (:func:`~vad.runtime.postprocess.causal_alarms`); the offline rule's, its first frame."""
    fps, branches = s.fps(name, ev.fps), s.branch_scores(name)
    if (rule or ev.rule) == "causal":
        return causal_alarms(s.raw[name], s.threshold(name), name, fps, s.causal_window, ev.min_event_frames,
                             ev.close_frames, branches)
    found = events(s.smoothed[name], s.threshold(name), clip=name, fps=fps, min_frames=ev.min_event_frames,
                   branches=branches)
    return [(e, e.start) for e in found]


def delay_report(s: ScoredRun, per_clip: dict[str, list[tuple[Event, int]]], ev: EvalConfig, rule: str) -> dict:
    """The alarm delay of the events ``per_clip`` (with their raise frames, :func:`clip_alarms`) over the labelled
    clips' anomalous spans (:func:`~vad.metrics.alarm_delays`; the definition is in :func:`protocol`)."""
    delays = {n: alarm_delays(y, [(e.start, e.end, r) for e, r in per_clip[n]]) for n, y in s.labels.items()}
    out = delay_summary(delays, {n: s.fps(n, ev.fps) for n in s.labels})
    return {"rule": rule, **{k: _r(v) if isinstance(v, float) else v for k, v in out.items()}}


def evaluate_run(run: Path | str, post: PostprocessConfig, ev: EvalConfig, progress: bool = True) -> dict:
    """Post-process the scores of ``run``, compute metrics (labelled clips), events, plots and the review page
    (:mod:`vad.review`); return metrics."""
    s = load_scored(run, post, ev, progress)
    manifest, labels = s.manifest, s.labels
    alarms = {r: {n: clip_alarms(s, n, ev, r) for n in manifest} for r in ("offline", "causal")}
    per_clip = {n: [e for e, _ in alarms[ev.rule][n]] for n in manifest}
    found = [e for name in manifest for e in per_clip[name]]

    metrics: dict = {
        "sigma": post.sigma, "normalisation": post.normalisation, "auc_kinds": AUC_NOTE,
        "protocol": protocol(post, ev),
        "postprocess": asdict(post), "eval": asdict(ev), "clips": len(manifest), "labelled_clips": len(labels),
        "threshold": {"rule": f"{ev.threshold_percentile}th percentile of normal hold-out frame scores "
                              "(training data only)", "values": {k: _r(v) for k, v in s.thresholds.items()}},
        "events": len(found), "event_rule": ev.rule,
        "alarms": alarm_report(s, per_clip, ev),
    }
    other = "offline" if ev.rule == "causal" else "causal"
    metrics[f"alarms_{other}"] = alarm_report(s, {n: [e for e, _ in alarms[other][n]] for n in manifest}, ev, other)
    if labels:
        labelled, metrics["threshold"]["best_f1_test_informed"] = _labelled_metrics(s, alarms, ev)
        metrics.update(labelled)
    _write_events(found, s.folder)
    untimed = sorted({e.clip for e in found if e.start_s is None})
    if untimed and progress:
        log.info(f"note: events of frame-folder clips have no times in events.csv ({', '.join(untimed[:3])}"
                 f"{', ...' if len(untimed) > 3 else ''}): give their frame rate with --set eval.fps=FPS")
    if ev.plots:
        _plots(s, per_clip, post, ev)
    page = write_review(s, per_clip, metrics, post, ev)
    write_text(json.dumps(metrics, indent=2), s.folder.metrics)
    if progress:
        _log_summary(s, metrics, len(found), page)
    return metrics


def _labelled_metrics(s: ScoredRun, alarms: dict, ev: EvalConfig) -> tuple[dict, dict]:
    """The metrics of the labelled clips of ``s`` (AUCs by protocol, AP, EER, alarm delays, per clip, per event, per
    scene, pixel AUROC), and the test-informed best-F1 threshold (for reference only)."""
    lab, raw, smoothed, final, manifest = s.labels, s.raw, s.smoothed, s.final, s.manifest
    pick = lambda d: {n: d[n] for n in lab}  # noqa: E731  (labelled clips only)
    macro, skipped = macro_auc(pick(final), lab)
    metrics = {
        "frame_auc_micro": _r(micro_auc(pick(final), lab)),
        "frame_auc_macro": _r(macro), "frame_auc_macro_skipped": skipped,
        "frame_ap": _r(average_precision(pick(final), lab)),
        "eer": _r(equal_error_rate(pick(final), lab)),
        "frame_auc_micro_raw": _r(micro_auc(pick(raw), lab)),
        "frame_auc_macro_raw": _r(macro_auc(pick(raw), lab)[0]),
        "frame_auc_micro_smoothed": _r(micro_auc(pick(smoothed), lab)),
        "frame_auc_macro_smoothed": _r(macro_auc(pick(smoothed), lab)[0]),
        "frame_auc_micro_minmax": _r(micro_auc({n: minmax(raw[n]) for n in lab}, lab)),
        "frame_auc_micro_smoothed_minmax": _r(micro_auc({n: minmax(smoothed[n]) for n in lab}, lab)),
        "alarm_delay": delay_report(s, alarms["causal"], ev, "causal"),
        "alarm_delay_offline": delay_report(s, alarms["offline"], ev, "offline"),
    }
    th, f1 = best_f1_threshold(pick(smoothed), lab)
    best_f1 = {"value": _r(th), "f1": _r(f1), "note": "chosen on the test labels; reference only"}
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
    pix, covered = _pixel_metric(s.run, manifest, lab, ev)
    if pix is not None:
        metrics["pixel_auroc"] = _r(pix)
        metrics["pixel_auroc_clips"] = {"with_pixel_ground_truth": covered, "labelled": len(lab)}
    return metrics, best_f1


def _log_summary(s: ScoredRun, metrics: dict, events: int, page) -> None:
    """The evaluate stage's lines: AUCs, alarm rates and the live rule's delays (labelled), or the event count."""
    if s.labels:
        a = metrics["alarms"]
        log.info(f"frame AUC micro {metrics['frame_auc_micro']:.4f}, macro {metrics['frame_auc_macro']:.4f} "
                 f"(sigma {metrics['sigma']}, {metrics['normalisation']}); raw micro "
                 f"{metrics['frame_auc_micro_raw']:.4f}, per-clip min-max {metrics['frame_auc_micro_minmax']:.4f}; "
                 f"{events} events: {pct(a['normal_frames_in_events'])} of normal frames inside them, "
                 f"{pct(a['anomalous_frames_caught'])} of anomalous frames caught -> {s.folder.metrics}")
        d = metrics["alarm_delay"]
        late = f", median delay {d['median_frames']:g} frames, worst {d['worst_frames']:g}" if d["caught"] else ""
        log.info(f"live rule: {d['caught']} of {d['spans']} anomalies alarmed{late}")
    else:
        log.info(f"{events} events over {len(s.manifest)} clips (no labels) -> {s.folder.events_csv}")
    log.info(f"review page: {page}")


def alarm_report(s: ScoredRun, per_clip: dict[str, list], ev: EvalConfig, rule: str | None = None) -> dict:
    """What the events ``per_clip`` (every clip of ``s``; the evaluate stage's: at the default threshold) mean to
    a user: events per hour of footage, and on labelled clips the fraction of normal frames inside events, of
    anomalous frames caught, and false alarm events (no anomalous frame) per hour of normal footage. Frame rates:
    the clips' own, else ``eval.fps``."""
    fps = {n: s.fps(n, ev.fps) for n in s.manifest}
    frames = {n: len(v) for n, v in s.smoothed.items()}
    hours = None if not all(fps.values()) else sum(frames[n] / fps[n] for n in frames) / 3600
    how = ("the live rule: the mean of the last postprocess.causal_window scores, open after eval.min_event_frames "
           "above, closed after eval.close_frames below" if (rule or ev.rule) == "causal" else "smoothed scores")
    out: dict = {"rule": "events at the default threshold (eval.threshold_percentile of normal hold-out scores) on "
                         f"{how}; calibrated scores are 1.0 there",
                 "events_per_hour": _r(sum(map(len, per_clip.values())) / hours) if hours else None}
    if s.labels:
        inside = {n: event_frames(frames[n], per_clip[n]) for n in s.labels}
        false = sum(1 for n in s.labels for e in per_clip[n] if not s.labels[n][e.start : e.end + 1].any())
        out.update({k: _r(v) if isinstance(v, float) else v
                    for k, v in alarm_rates(inside, s.labels, false, fps).items()})
    return out


def _pixel_metric(run: Path, manifest: dict, labels: dict, ev: EvalConfig) -> tuple[float | None, int]:
    """Pixel AUROC over the labelled clips that have pixel ground truth and saved maps (UCSD Ped1 has masks for
    some clips only), and how many clips that is."""
    folder = RunFolder(run)
    names = [n for n in labels if manifest[n].pixel_mask and folder.maps(n).is_file()]
    if not names:
        return None, 0
    maps, masks = {}, {}
    for n in names:
        maps[n] = np.load(folder.maps(n))
        masks[n] = read_pixel_mask(Path(manifest[n].pixel_mask), manifest[n].frames, n)
    return pixel_auroc(maps, masks, max_pixels=ev.pixel_max), len(names)


def _write_events(found: list, run: RunFolder) -> None:
    fields = ["id", "clip", "start", "end", "peak", "peak_frame", "start_s", "end_s", "branch"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for e in found:
        writer.writerow(asdict(e))
    write_text(buf.getvalue(), run.events_csv)
    write_text(json.dumps([asdict(e) for e in found], indent=2), run.events_json)


def _plots(s: ScoredRun, per_clip: dict[str, list], post: PostprocessConfig, ev: EvalConfig) -> None:
    labels = s.labels
    if labels:
        y = np.concatenate([labels[n] for n in labels])
        cat = lambda d: np.concatenate([d[n] for n in labels])  # noqa: E731
        plot_roc({"raw": (cat(s.raw), y), f"smoothed (sigma {post.sigma})": (cat(s.smoothed), y),
                  f"smoothed + {post.normalisation}": (cat(s.final), y)},
                 s.folder.roc_plot, "frame-level ROC, micro (all test frames)")
    for name, info in s.manifest.items():
        scores, threshold = s.shown(name)
        raw = s.raw[name] if s.normalisation != "calibrated" else None  # raw scores are in the model's units
        plot_timeline(scores, s.folder.timeline(name), f"{name}: anomaly score",
                      labels=labels.get(name), threshold=threshold, raw=raw,
                      fps=info.fps or ev.fps, events=per_clip[name])
