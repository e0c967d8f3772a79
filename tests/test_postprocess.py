"""Smoothing, normalisation, events and the frame-level evaluator, pinned to hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from vad.metrics import (
    average_precision,
    best_f1_threshold,
    clip_aucs,
    equal_error_rate,
    event_aucs,
    label_events,
    macro_auc,
    micro_auc,
    pixel_auroc,
)
from vad.runs import ClipRecord, RunFolder, write_manifest
from vad.runtime.postprocess import CausalRule, causal_events, event_frames, events, minmax, normalise, smooth
from vad.runtime.reference import calibrate, event_threshold


def test_auc_perfect_reversed_constant() -> None:
    y = {"a": np.array([0, 0, 1, 1]), "b": np.array([0, 1, 0, 0])}
    good = {"a": np.array([0.1, 0.2, 0.8, 0.9]), "b": np.array([0.0, 0.7, 0.3, 0.1])}
    assert micro_auc(good, y) == 1.0
    assert micro_auc({k: -v for k, v in good.items()}, y) == 0.0
    assert micro_auc({k: np.ones(4) for k in y}, y) == 0.5
    assert macro_auc(good, y) == (1.0, 0)


def test_micro_and_macro_differ_by_definition() -> None:
    # within each clip perfectly ordered, but clip b's scores all sit above clip a's
    y = {"a": np.array([0, 1]), "b": np.array([0, 1])}
    s = {"a": np.array([0.0, 1.0]), "b": np.array([2.0, 3.0])}
    assert macro_auc(s, y) == (1.0, 0)
    assert micro_auc(s, y) == pytest.approx(0.75)  # 3 of the 4 (anomalous, normal) pairs are ordered


def test_single_class_clips_are_skipped_in_macro_and_counted() -> None:
    y = {"a": np.array([0, 1, 1]), "all_anomalous": np.array([1, 1, 1]), "all_normal": np.array([0, 0])}
    s = {"a": np.array([0.0, 1.0, 2.0]), "all_anomalous": np.array([0.0, 0.0, 0.0]), "all_normal": np.array([5, 5])}
    assert clip_aucs(s, y) == {"a": 1.0, "all_anomalous": None, "all_normal": None}
    assert macro_auc(s, y) == (1.0, 2)


def test_metric_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="no scores for labelled clip"):
        micro_auc({}, {"a": np.array([0, 1])})
    with pytest.raises(ValueError, match="clip a: 3 scores for 2 labelled frames"):
        micro_auc({"a": np.zeros(3)}, {"a": np.array([0, 1])})
    with pytest.raises(ValueError, match="both normal and anomalous"):
        micro_auc({"a": np.zeros(2)}, {"a": np.array([0, 0])})


def test_ap_eer_and_best_f1() -> None:
    y = {"a": np.array([0, 0, 0, 1, 1])}
    assert average_precision({"a": np.array([0.1, 0.2, 0.3, 0.8, 0.9])}, y) == 1.0
    assert equal_error_rate({"a": np.array([0.1, 0.2, 0.3, 0.8, 0.9])}, y) == 0.0
    assert equal_error_rate({"a": np.array([0.9, 0.8, 0.7, 0.2, 0.1])}, y) == 1.0
    th, f1 = best_f1_threshold({"a": np.array([0.1, 0.2, 0.3, 0.8, 0.9])}, y)
    assert f1 == 1.0 and th == pytest.approx(0.8)


def test_event_aucs_and_label_events() -> None:
    assert label_events(np.array([1, 1, 0, 0, 1, 0, 1])) == [(0, 2), (4, 5), (6, 7)]
    y = {"a": np.array([0, 1, 1, 0, 0, 1])}
    s = {"a": np.array([0.0, 5.0, 5.0, 1.0, 0.5, 0.2])}
    assert event_aucs(s, y) == {"a[1:3]": 1.0, "a[5:6]": pytest.approx(1 / 3)}


def test_smoothing_keeps_length_and_constants() -> None:
    x = np.r_[np.zeros(10), np.ones(10)]
    for sigma in (0, 1, 3, 7):
        out = smooth(x, sigma)
        assert out.shape == x.shape
        assert np.allclose(smooth(np.full(15, 2.5), sigma), 2.5)
    assert np.array_equal(smooth(x, 0), x)
    assert smooth(x, 3)[9] < 1 and smooth(x, 3)[9] > 0  # edges blur
    with pytest.raises(ValueError, match="sigma"):
        smooth(x, -1)


def test_minmax_and_calibration() -> None:
    out = minmax(np.array([2.0, 4.0, 3.0]))
    assert np.allclose(out, [0, 1, 0.5]) and out.min() == 0 and out.max() == 1
    assert np.array_equal(minmax(np.full(4, 3.0)), np.zeros(4))
    normal = np.arange(101, dtype=float)  # median 50, 99th percentile 99
    th = event_threshold(normal, 99)
    assert th == 99
    assert np.allclose(calibrate(np.array([50.0, 99.0, 148.0]), normal, th), [0, 1, 2])  # 1.0 = the threshold
    assert np.allclose(calibrate(np.array([-3.0, -1.0]), np.array([-3.0, -3.0, -1.0]), -1.0), [0, 1])  # log-odds
    with pytest.raises(ValueError, match="not above the median"):
        calibrate(np.ones(3), np.ones(5), 1.0)
    with pytest.raises(ValueError, match="normal validation scores"):
        normalise(np.ones(3), "calibrated")
    with pytest.raises(ValueError, match="unknown normalisation 'zscore'"):
        normalise(np.ones(3), "zscore")


def test_events_have_exact_frames_and_times() -> None:
    s = np.array([0, 0, 5, 6, 0, 0, 7, 7, 7, 0, 9])
    ev = events(s, threshold=1, clip="c", fps=10)
    assert [(e.start, e.end, e.peak, e.peak_frame) for e in ev] == [(2, 3, 6, 3), (6, 8, 7, 6), (10, 10, 9, 10)]
    assert (ev[0].start_s, ev[0].end_s) == (0.2, 0.4)
    assert [(e.start, e.end) for e in events(s, threshold=1, min_frames=2)] == [(2, 3), (6, 8)]
    assert events(s, threshold=1)[0].start_s is None
    assert events(np.zeros(5), threshold=0) == []


def test_pixel_auroc() -> None:
    masks = {"a": np.zeros((2, 8, 8), np.uint8)}
    masks["a"][1, :4, :4] = 1
    maps = {"a": np.zeros((2, 2, 2), np.float32)}
    maps["a"][1, 0, 0] = 1.0
    assert pixel_auroc(maps, masks) == 1.0
    maps["a"][0, 1, 1] = 2.0  # a normal cell above the anomalous one
    assert pixel_auroc(maps, masks) == pytest.approx(6 / 7)


def _fake_run(root, scores: dict, labels: dict, scenes: dict, normal: np.ndarray):
    """A scored run folder written by hand (the evaluate stage never needs a model)."""
    for name, s in scores.items():
        (root / "scores").mkdir(parents=True, exist_ok=True)
        np.save(root / "scores" / f"{name}.npy", np.asarray(s, np.float32))
        if name in labels:
            (root / "labels").mkdir(exist_ok=True)
            np.save(root / "labels" / f"{name}.npy", np.asarray(labels[name], np.uint8))
    (root / "normal_scores").mkdir()
    np.save(root / "normal_scores" / "all.npy", normal.astype(np.float32))
    records = {n: ClipRecord(path=str(root / n), kind="frames", scene=scenes[n], frames=len(s), fps=None,
                             labelled=n in labels, reference="all", pixel_mask=None, source={}, scored_with={})
               for n, s in scores.items()}
    write_manifest(records, RunFolder(root).manifest)
    return root


def test_evaluate_run_without_a_model(tmp_path) -> None:
    import json

    from vad.config import EvalConfig, PostprocessConfig
    from vad.offline.evaluate import evaluate_run

    scores = {"01_0001": [1, 1, 5, 6, 1, 1], "02_0001": [1, 7, 7, 7, 2, 1], "cam": [0, 0, 9, 9, 0, 0]}
    labels = {"01_0001": [0, 0, 1, 1, 0, 0], "02_0001": [0, 1, 1, 1, 0, 0]}
    run = _fake_run(tmp_path, scores, labels, {"01_0001": "01", "02_0001": "02", "cam": None},
                    normal=np.arange(101, dtype=float) / 25)  # 99th percentile: 3.96
    m = evaluate_run(run, PostprocessConfig(sigma=0, normalisation="calibrated"),
                     EvalConfig(threshold_percentile=99, min_event_frames=1, plots=False, fps=10), progress=False)
    assert m["frame_auc_micro_raw"] == 1.0 and m["frame_auc_micro"] == 1.0 and m["frame_auc_macro"] == 1.0
    assert m["sigma"] == 0 and m["normalisation"] == "calibrated"
    assert set(m["per_scene"]) == {"01", "02"}
    assert m["threshold"]["values"]["all"] == pytest.approx(3.96)
    ev = json.loads((run / "events.json").read_text())
    assert [(e["clip"], e["start"], e["end"], e["start_s"]) for e in ev] == [
        ("01_0001", 2, 3, 0.2), ("02_0001", 1, 3, 0.1), ("cam", 2, 3, 0.2)]
    assert m["events"] == 3 and json.loads((run / "metrics.json").read_text()) == m


def test_alarm_rates_on_a_hand_made_run(tmp_path) -> None:
    """metrics.json's alarm rates, counted by hand: threshold 3.96 (99th percentile of 0..4), events of >= 2
    frames on unsmoothed scores, 10 frames/s."""
    from vad.config import EvalConfig, PostprocessConfig
    from vad.offline.evaluate import evaluate_run

    scores = {"a": [1, 5, 5, 5, 1, 1, 5, 5, 1, 1],  # events 1-3 (anomalous 2-4: 2 of 3 caught) and 6-7 (false)
              "b": [1, 1, 1, 1, 1, 5, 1, 1, 1, 1],  # one frame above: no event (min 2 frames)
              "c": [5, 5, 5, 5, 1, 1, 1, 1, 1, 1]}  # all-normal clip: a false event of 4 frames
    labels = {"a": [0, 0, 1, 1, 1, 0, 0, 0, 0, 0], "b": [0] * 10, "c": [0] * 10}
    run = _fake_run(tmp_path, scores, labels, {n: None for n in scores}, normal=np.arange(101, dtype=float) / 25)
    m = evaluate_run(run, PostprocessConfig(sigma=0, normalisation="calibrated"),
                     EvalConfig(min_event_frames=2, plots=False, fps=10), progress=False)
    a = m["alarms"]
    normal_frames = 30 - 3
    assert a["normal_frames"] == normal_frames and a["anomalous_frames"] == 3
    assert a["normal_frames_in_events"] == pytest.approx(round((1 + 2 + 4) / normal_frames, 6))  # a: 1, 6, 7; c: 0-3
    assert a["anomalous_frames_caught"] == pytest.approx(round(2 / 3, 6))
    assert a["false_alarm_events"] == 2
    assert a["false_alarm_events_per_hour"] == pytest.approx(2 / (normal_frames / 10 / 3600))
    assert a["events_per_hour"] == pytest.approx(3 / (30 / 10 / 3600))
    m = evaluate_run(run, PostprocessConfig(sigma=0), EvalConfig(min_event_frames=2, plots=False), progress=False)
    assert m["alarms"]["false_alarm_events_per_hour"] is None and m["alarms"]["events_per_hour"] is None  # no fps


def test_threshold_comes_from_training_data_only(tmp_path) -> None:
    """Perturbing the test scores (and labels) never moves the threshold; perturbing the hold-out does. Calibrated
    scores are 1.0 exactly at it, so events drawn on them are the same events."""
    from vad.config import EvalConfig, PostprocessConfig
    from vad.offline.evaluate import evaluate_run, load_scored

    rng = np.random.default_rng(0)
    normal = rng.gamma(2.0, 1.0, 500)
    post, ev = PostprocessConfig(sigma=2, normalisation="calibrated"), EvalConfig(plots=False, fps=10)
    seen = set()
    for k in range(3):
        scores = {"x": rng.gamma(2.0, 1.0 + k, 60), "y": rng.gamma(2.0, 3.0, 60)}
        labels = {"x": (rng.random(60) < 0.3).astype(int), "y": np.zeros(60, int)}
        run = _fake_run(tmp_path / str(k), scores, labels, {"x": None, "y": None}, normal)
        m = evaluate_run(run, post, ev, progress=False)
        seen.add(m["threshold"]["values"]["all"])
        s = load_scored(run, post, ev)
        for n in scores:
            assert np.array_equal(s.final[n] > 1.0, s.smoothed[n] > s.threshold(n))
            assert np.allclose(s.shown(n)[0], s.final[n]) and s.shown(n)[1] == 1.0
    assert seen == {round(float(np.percentile(normal, 99)), 6)}
    moved = _fake_run(tmp_path / "moved", scores, labels, {"x": None, "y": None}, normal * 2)
    assert evaluate_run(moved, post, ev, progress=False)["threshold"]["values"]["all"] != seen.pop()


def test_event_frames() -> None:
    found = events(np.array([0, 2, 2, 0, 0, 3]), threshold=1)
    assert event_frames(6, found).tolist() == [False, True, True, False, False, True]
    assert not event_frames(4, []).any()


def test_the_causal_rule_on_a_hand_made_series() -> None:
    """Open after 3 smoothed scores above the threshold (the event starts at the first), close after 2 below (it ends
    at the last above); a short burst raises nothing; an event still open at the end closes there."""
    s = np.array([0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 0, 2, 2, 0, 0, 0, 3, 3, 3, 3, 3], dtype=float)
    found = causal_events(s, 1.0, "c", fps=10, window=1, open_frames=3, close_frames=2)
    assert [(e.start, e.end, e.peak, e.id) for e in found] == [(2, 5, 2.0, "c-f2"), (16, 20, 3.0, "c-f16")]
    assert found[0].start_s == 0.2 and found[0].end_s == 0.6
    smoothed = causal_events(s, 1.0, "c", window=3, open_frames=2, close_frames=2)  # the mean of the last 3 scores
    assert [(e.start, e.end) for e in smoothed] == [(3, 6), (12, 13), (17, 20)]
    rule = CausalRule(1.0, window=1, open_frames=2, close_frames=1, clip="c")
    pushed = [rule.push(t, x) for t, x in enumerate([0, 2, 2, 2])]
    assert pushed[1] == [] and [k for k, _ in pushed[2]] == ["start"] and pushed[2][0][1].start == 1
    assert [k for k, e in rule.reset()] == ["end"]  # a gap closes the open event at the last frame pushed
    assert rule.push(4, 2.0) == []  # and the rule starts afresh


def test_causal_events_never_read_the_future() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(0, 1, 200)
    s[50:60] += 5
    first = causal_events(s, 1.5, window=3, open_frames=3, close_frames=3)
    later = s.copy()
    later[120:] = rng.normal(0, 1, 80) + 4  # the future changes
    again = causal_events(later, 1.5, window=3, open_frames=3, close_frames=3)
    assert [e for e in first if e.end < 115] == [e for e in again if e.end < 115]
