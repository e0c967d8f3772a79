"""Learning from verdicts: an event marked normal is learned as normal footage (its score falls), without the test
labels; the previous model is kept and the clips it scored are scored again; a verdict withdrawn (marked anomaly
later) takes the event's frames out of the next adaptation's training. A verdict line torn by a crash is skipped
by every reader of the verdicts (the page's server, `vad feedback`, `vad adapt`)."""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tests import helpers
from vad.cli import main
from vad.offline.adapt import normal_footage
from vad.review import ReviewServer
from vad.runs import RunFolder, read_manifest
from vad.runtime.checkpoint import read_checkpoint
from vad.runtime.reference import NormalReference


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("adapt")
    data = helpers.make_anomaly_scene(base / "data", n_train=4)
    run = base / "run"
    tiny = ["model.input_height=96", "train.epochs=5", "train.batch_size=8", "train.lr=3e-3", "train.object_shift=0"]
    assert main(["train", "--data", str(data), "--dataset", "shanghaitech", "--out", str(run), "--set", *tiny]) == 0
    assert main(["score", "--run", str(run)]) == 0
    assert main(["evaluate", "--run", str(run), "--set", "eval.threshold_percentile=90"]) == 0
    return data, run


def test_a_torn_verdict_line_is_skipped_by_every_reader(evaluated, tmp_path: Path, caplog) -> None:
    """A line half-written by a crash: the page's server reports it and serves the other verdicts, `vad feedback`
    writes after it, `vad adapt` skips it with a note; none stops. (First in this file: the run is as evaluated.)"""
    run = tmp_path / "run"
    shutil.copytree(evaluated[1], run)
    folder = RunFolder(run)
    folder.feedback.unlink(missing_ok=True)
    event = json.loads(folder.events_json.read_text())[0]
    old = {"event": "earlier-e9", "clip": event["clip"], "start": 0, "end": 3, "verdict": "anomaly",
           "time": "2024-01-01T00:00:00Z", "via": "cli"}  # an event of an earlier evaluation
    folder.feedback.write_text(json.dumps(old) + '\n{"event": "x", "verd')  # torn: no newline
    server = ReviewServer(run, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert _feedback_page(server) == {"verdicts": {"earlier-e9": old}, "unreadable_lines": [2]}
        assert main(["feedback", "--run", str(run), "--event", event["id"], "--verdict", "normal"]) == 0
        lines = folder.feedback.read_text().splitlines()
        assert len(lines) == 3 and lines[:2] == [json.dumps(old), '{"event": "x", "verd']
        given = _feedback_page(server)
        assert given["unreadable_lines"] == [2] and set(given["verdicts"]) == {"earlier-e9", event["id"]}
        assert given["verdicts"][event["id"]] == json.loads(lines[2])
    finally:
        server.shutdown()
        server.server_close()
    log = logging.getLogger("vad.offline.adapt")
    log.addHandler(caplog.handler)  # the CLI's console logging keeps vad's records from the root logger
    try:
        with caplog.at_level(logging.WARNING, logger="vad.offline.adapt"):
            clips, ranges, marked = normal_footage(folder)
    finally:
        log.removeHandler(caplog.handler)
    name = f"{event['clip']}@{event['start']}"
    assert marked == {name: event["id"]} and [c.name for c in clips] == [name]
    assert ranges == {name: (event["start"], event["end"] + 1)}
    assert f"{folder.feedback} line 2: not verdicts" in caplog.text


def _feedback_page(server: ReviewServer) -> dict:
    """What the review page reads: GET /api/feedback."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/api/feedback")
        r = conn.getresponse()
        assert r.status == 200
        return json.loads(r.read())
    finally:
        conn.close()


def _calibrated(folder: RunFolder, clip: str) -> np.ndarray:
    """A clip's scores on its model's threshold scale (1.0 at the event threshold), comparable across models."""
    reference = NormalReference.load(folder.normal_scores(read_manifest(folder)[clip].reference))
    return reference.calibrate(np.load(folder.scores(clip)), 99)


def test_an_event_marked_normal_is_learned_as_normal(evaluated, capsys) -> None:
    data, run = evaluated
    folder = RunFolder(run)
    events = json.loads(folder.events_json.read_text())
    assert events, "the tiny scene's anomaly raised no event"
    event = max(events, key=lambda e: e["peak"])
    frames = slice(event["start"], event["end"] + 1)
    before = _calibrated(folder, event["clip"])[frames].mean()
    digest = folder.model.read_bytes()
    assert main(["feedback", "--run", str(run), "--event", event["id"], "--verdict", "normal"]) == 0
    # The test labels are gone while the model adapts: it never reads them.
    hidden = data.parent / "hidden_labels"
    shutil.move(data / "testing" / "test_frame_mask", hidden)
    shutil.move(folder.root / "labels", data.parent / "hidden_run_labels")
    try:
        assert main(["adapt", "--run", str(run), "--epochs", "3", "--lr", "1e-3"]) == 0
    finally:
        shutil.move(hidden, data / "testing" / "test_frame_mask")
        shutil.move(data.parent / "hidden_run_labels", folder.root / "labels")
    out = capsys.readouterr().out
    assert "1 event(s) marked normal" in out and "the previous model" in out
    kept = list(folder.models.glob("*.pt"))
    assert len(kept) == 1 and kept[0].read_bytes() == digest  # the previous model, kept
    assert folder.model.read_bytes() != digest
    assert main(["score", "--run", str(run)]) == 0
    assert "scored 32 frames of 2 clips" in capsys.readouterr().out  # scored by the old model: scored again
    after = _calibrated(folder, event["clip"])[frames].mean()
    assert after < before  # the event's frames now look more normal to the model, on its threshold's scale
    assert all(r.scored_with["model"] != "" for r in read_manifest(folder).values())
    # Adapted again: the footage learned the first time stays part of what the model was trained on.
    assert main(["evaluate", "--run", str(run), "--set", "eval.threshold_percentile=90"]) == 0
    assert main(["adapt", "--run", str(run), "--epochs", "1", "--lr", "1e-3"]) == 0
    ckpt = read_checkpoint(folder.model)
    name = f"{event['clip']}@{event['start']}"
    assert set(ckpt["extra_clips"]) == {name} <= set(ckpt["train_clips"])
    assert ckpt["extra_clips"][name]["event"] == event["id"]  # the footage names the event it came from
    assert len(ckpt["adapted_from"]) == 2
    # The verdict withdrawn (the event was an anomaly after all): the next adapt no longer trains on its frames.
    capsys.readouterr()
    assert main(["feedback", "--run", str(run), "--event", event["id"], "--verdict", "anomaly"]) == 0
    assert main(["adapt", "--run", str(run), "--epochs", "1", "--lr", "1e-3"]) == 0
    assert f"{name} leaves the training footage" in capsys.readouterr().out
    ckpt = read_checkpoint(folder.model)
    assert ckpt["extra_clips"] == {} and name not in ckpt["train_clips"]
    assert ckpt["adapted_from"][-1]["withdrawn"] == [name]


def test_adapt_without_verdicts_says_what_to_do(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    (run / "model.pt").write_bytes(b"x")
    assert main(["adapt", "--run", str(run)]) == 2
    assert "is marked normal" in capsys.readouterr().err
