"""The literature's evaluation protocol (micro AUC raw and after per-clip min-max, macro) and the alarm delay,
pinned to hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_postprocess import _fake_run
from vad.config import EvalConfig, PostprocessConfig
from vad.metrics import alarm_delays, delay_summary, micro_auc
from vad.offline.evaluate import evaluate_run
from vad.runtime.postprocess import causal_alarms, causal_events, minmax

# clip a: normal 0, 1; anomalous 2, 3. Clip b: normal 10, 25, 20; anomalous 30.
SCORES = {"a": [0.0, 1.0, 2.0, 3.0], "b": [10.0, 30.0, 25.0, 20.0]}
LABELS = {"a": [0, 0, 1, 1], "b": [0, 1, 0, 0]}
NORMAL = np.arange(101, dtype=float) / 25  # the hold-out: 99th percentile 3.96


def test_micro_auc_after_per_clip_minmax_by_hand() -> None:
    """Raw: of the 3 x 5 (anomalous, normal) pairs, 2 + 2 + 5 are ordered (b's normal frames outscore a's
    anomalies): 9/15. Min-max per clip: a -> 0, 1/3, 2/3, 1; b -> 0, 1, 0.75, 0.5; only (2/3, 0.75) is out of
    order: 14/15."""
    y = {n: np.array(v) for n, v in LABELS.items()}
    raw = {n: np.array(v) for n, v in SCORES.items()}
    assert micro_auc(raw, y) == pytest.approx(9 / 15)
    assert micro_auc({n: minmax(v) for n, v in raw.items()}, y) == pytest.approx(14 / 15)


def test_metrics_json_names_the_protocol(tmp_path) -> None:
    import json

    run = _fake_run(tmp_path, SCORES, LABELS, {"a": None, "b": None}, NORMAL)
    m = evaluate_run(run, PostprocessConfig(sigma=0, normalisation="none"), EvalConfig(plots=False), progress=False)
    assert m["frame_auc_micro_raw"] == pytest.approx(0.6) and m["frame_auc_micro"] == pytest.approx(0.6)
    assert m["frame_auc_micro_minmax"] == pytest.approx(round(14 / 15, 6))  # whatever postprocess.normalisation is
    assert m["frame_auc_micro_smoothed_minmax"] == m["frame_auc_micro_minmax"]  # sigma 0
    assert m["frame_auc_macro"] == pytest.approx((1.0 + 1.0) / 2)
    keys = {"frame_auc_micro", "frame_auc_micro_raw", "frame_auc_micro_minmax", "frame_auc_micro_smoothed",
            "frame_auc_micro_smoothed_minmax", "frame_auc_macro", "frame_auc_macro_raw", "frame_auc_macro_smoothed",
            "alarm_delay", "alarm_delay_offline"}
    assert keys <= set(m) and keys <= set(m["protocol"])  # every reported figure is defined
    assert m["protocol"]["sigma"] == 0 and "sigma 0" in m["protocol"]["frame_auc_micro_smoothed_minmax"]
    for rule in ("causal", "offline"):
        d = m["alarm_delay" if rule == "causal" else "alarm_delay_offline"]
        assert d["rule"] == rule and d["spans"] == 2 and d["caught"] + d["missed"] == 2
        assert {"median_frames", "worst_frames", "median_s", "worst_s"} <= set(d)
    assert json.loads((run / "metrics.json").read_text()) == m

    post = PostprocessConfig(sigma=1, normalisation="minmax")  # the published protocol is the configured one here
    m = evaluate_run(run, post, EvalConfig(plots=False), progress=False)
    assert m["frame_auc_micro_smoothed_minmax"] == m["frame_auc_micro"]
    assert m["frame_auc_micro_minmax"] == pytest.approx(round(14 / 15, 6))  # raw: smoothing does not touch it
    assert m["frame_auc_macro"] == m["frame_auc_macro_smoothed"]  # per-clip normalisation is increasing


def test_alarm_delays_by_hand() -> None:
    """Spans 2-4, 7-8 and 12-15. The first alarm opened at 0 and was raised at 1, before span 1 began: 0 frames.
    Nothing covers span 2 (the alarm at 9-10 comes after it): missed. Span 3's alarm covers 14-18, raised at 16:
    4 frames after the span's first frame, 2 to the alarm's first frame."""
    y = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0])
    alarms = [(0, 3, 1), (9, 10, 10), (14, 18, 16)]
    assert alarm_delays(y, alarms) == [(0, 0), None, (4, 2)]
    assert alarm_delays(y, [(1, 2, 3)]) == [(1, 0), None, None]  # on before the span, raised after its start
    assert alarm_delays(np.zeros(5), alarms) == []
    out = delay_summary({"x": alarm_delays(y, alarms), "quiet": []}, {"x": 10.0, "quiet": None})
    assert out == {"spans": 3, "caught": 2, "missed": 1, "median_frames": 2.0, "worst_frames": 4,
                   "median_s": pytest.approx(0.2), "worst_s": pytest.approx(0.4),
                   "median_frames_to_event_start": 1.0, "worst_frames_to_event_start": 2}
    unknown = delay_summary({"x": alarm_delays(y, alarms)}, {"x": None})  # no frame rate: no seconds
    assert unknown["median_frames"] == 2.0 and unknown["median_s"] is None and unknown["worst_s"] is None
    none = delay_summary({"x": [None]}, {"x": 10.0})
    assert none["missed"] == 1 and none["median_frames"] is None and none["worst_s"] is None


def test_the_live_rule_raises_open_frames_after_an_event_starts() -> None:
    s = np.array([0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 0, 2, 2, 0, 0, 0, 3, 3, 3, 3, 3], dtype=float)
    found = causal_alarms(s, 1.0, "c", window=1, open_frames=3, close_frames=2)
    assert [(e.start, e.end, r) for e, r in found] == [(2, 5, 4), (16, 20, 18)]
    assert [e for e, _ in found] == causal_events(s, 1.0, "c", window=1, open_frames=3, close_frames=2)


def test_alarm_delay_in_metrics_json(tmp_path, caplog) -> None:
    """Threshold 3.96; the live rule on raw scores (window 1, raised on the 2nd frame above, closed after 1 below),
    10 frames/s. Span 3-6: the alarm starts at 1, raised at 2: 0 frames. Span 12-13: scores low, missed. Span
    24-29: the alarm starts at 26, raised at 27: 3 frames (0.3 s), 2 to its start."""
    y = np.zeros(30, int)
    y[3:7], y[12:14], y[24:30] = 1, 1, 1
    s = np.ones(30)
    s[1:7], s[26:30] = 5, 5
    run = _fake_run(tmp_path, {"a": s, "n": np.ones(30)}, {"a": y, "n": np.zeros(30, int)}, {"a": None, "n": None},
                    NORMAL)
    post = PostprocessConfig(sigma=0, normalisation="none", causal_window=1)
    with caplog.at_level("INFO", logger="vad.offline.evaluate"):
        m = evaluate_run(run, post, EvalConfig(min_event_frames=2, close_frames=1, plots=False, fps=10))
    assert "live rule: 2 of 3 anomalies alarmed, median delay 1.5 frames, worst 3" in caplog.text
    assert m["alarm_delay"] == {"rule": "causal", "spans": 3, "caught": 2, "missed": 1, "median_frames": 1.5,
                                "worst_frames": 3, "median_s": 0.15, "worst_s": 0.3,
                                "median_frames_to_event_start": 1.0, "worst_frames_to_event_start": 2}
    off = m["alarm_delay_offline"]  # events 1-6 and 26-29 of the (unsmoothed) scores, raised at their first frame
    assert (off["rule"], off["caught"], off["missed"], off["median_frames"], off["worst_frames"]) == (
        "offline", 2, 1, 1.0, 2)
