"""Live monitoring over loopback only: a replayed clip scores as `vad score` does; a stream that dies and comes back
is a gap, never an anomaly; a slow consumer drops frames instead of lagging; SIGTERM mid-event leaves an end line and
a playable clip; a webhook gets what the file gets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import av
import numpy as np
import pytest

from tests import helpers
from vad.cli import main
from vad.live.detector import Detector
from vad.live.events import EventTracker, Scored
from vad.live.sinks import StdoutSink, WebhookSink
from vad.live.sources import End, Frame, Gap, Source
from vad.live.watch import Watch, WatchOptions
from vad.runs import RunFolder
from vad.runtime.postprocess import CausalRule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(live_run: Path) -> Path:
    return live_run


def _anomaly_video(path: Path, fps: int = 10) -> Path:
    """A test clip of the scene (its anomaly in frames 6..13) as a video, lossless enough to score alike."""
    data = helpers.paste_anomaly(helpers.frames(50), 6, 14)
    return helpers.write_video(path, data, fps=fps)


def test_a_replayed_clip_scores_as_vad_score(run: Path, tmp_path: Path) -> None:
    video = _anomaly_video(tmp_path / "in" / "cam.avi")
    assert main(["score", "--run", str(run), "--input", str(video)]) == 0
    offline = np.load(RunFolder(run).scores("cam"))
    det = Detector.load(run, device="cpu")
    got: dict[int, float] = {}
    real_score = det.score

    def recording(frames, stream="default", first=None):
        out = real_score(frames, stream, first)
        got.update({first + i: float(s) for i, s in enumerate(out.scores)})
        return out

    det.score = recording
    watch = Watch(det, str(video), WatchOptions(out=tmp_path / "w", batch=3, progress=False))
    list(watch.run())
    assert sorted(got) == list(range(len(offline)))  # every frame, each once, in order
    np.testing.assert_allclose([got[i] for i in range(len(offline))], offline, rtol=1e-4, atol=1e-4)
    # The same frames through the API in batches of other sizes: the same scores again.
    frames = [f.to_ndarray(format="rgb24") for f in av.open(str(video)).decode(video=0)]
    det.score = real_score
    parts = [det.score(frames[a:b], stream="api").scores for a, b in ((0, 1), (1, 6), (6, 16))]
    np.testing.assert_allclose(np.concatenate(parts), offline, rtol=1e-4, atol=1e-4)


def _publish(url: str, fmt: str, chunks: list[tuple[np.ndarray, float]], fps: int = 10, **options) -> None:
    """H.264 at ``fps``, one connection per chunk of frames, each followed by its pause in seconds (the sender dies
    and comes back); a connection refused (the watcher not listening yet) is tried again."""
    for frames, pause in chunks:
        for _ in range(100):
            try:
                _send(url, fmt, frames, fps, options)
                break
            except ConnectionRefusedError:
                time.sleep(0.2)
        time.sleep(pause)


def _send(url: str, fmt: str, frames: np.ndarray, fps: int, options: dict) -> None:
    with av.open(url, "w", format=fmt, options=options) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"tune": "zerolatency", "preset": "ultrafast", "qp": "0"}
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            time.sleep(1 / fps)
        c.mux(s.encode())


def test_a_stream_that_dies_and_comes_back_is_a_gap_not_an_anomaly(run: Path, tmp_path: Path) -> None:
    """A camera pushing RTSP sends 24 frames, dies for 4 s, then sends them again: one gap line; the frames after it
    score exactly as the first ones did (the motion context restarted, as at a clip's start), so the outage raised
    nothing of its own, and nothing was scored for it."""
    url = f"rtsp://127.0.0.1:{helpers.free_port()}/live"
    segment = helpers.frames(0, 24)
    sender = threading.Thread(target=_publish, args=(url, "rtsp", [(segment, 4.0), (segment, 0.0)]),
                              kwargs={"rtsp_transport": "tcp"}, daemon=True)
    det = Detector.load(run, device="cpu")
    scored: list[float] = []
    real_score = det.score

    def recording(batch, stream="default", first=None):
        out = real_score(batch, stream, first)
        scored.extend(out.calibrated.tolist() if stream != "warm-up" else [])
        return out

    det.score = recording
    opts = WatchOptions(out=tmp_path / "w", listen=True, stall_timeout=1.0, open_timeout=20, progress=False)
    watch = Watch(det, url, opts)
    watch.camera.src.backoff = (0.2, 0.5)  # listen again quickly: the outage is 4 s
    sender.start()
    lines, t0, boundary = [], time.monotonic(), None
    for line in watch.run():
        lines.append(line)
        if line["type"] == "gap":
            boundary = len(scored)  # the frames scored before the outage
        if (boundary is not None and len(scored) >= 2 * len(segment)) or time.monotonic() - t0 > 90:
            watch.stop()
    sender.join(timeout=20)
    gaps = [x for x in lines if x["type"] == "gap"]
    assert len(gaps) == 1 and gaps[0]["seconds"] >= 2.0 and gaps[0]["start"] < gaps[0]["end"]
    assert boundary == len(segment) and len(scored) == 2 * len(segment)  # every frame once, none for the outage
    np.testing.assert_allclose(scored[boundary:], scored[:boundary], rtol=1e-4, atol=1e-4)
    starts = [x["frame"] for x in lines if x["type"] == "start"]
    assert [f - boundary for f in starts if f >= boundary] == [f for f in starts if f < boundary]
    written = [json.loads(x) for x in (tmp_path / "w" / "events.jsonl").read_text().splitlines()]
    assert [x["type"] for x in written] == [x["type"] for x in lines]


def test_a_slow_consumer_drops_frames_instead_of_lagging(run: Path, tmp_path: Path) -> None:
    video = helpers.write_video(tmp_path / "fast.avi", np.concatenate([helpers.frames(i, 16) for i in range(4)]),
                                fps=40)
    det = Detector.load(run, device="cpu")
    real_score = det.score

    def slow(frames, stream="default", first=None):
        time.sleep(0.25)  # a consumer slower than the 40 fps the source sends
        return real_score(frames, stream, first)

    det.score = slow
    watch = Watch(det, str(video), WatchOptions(realtime=True, queue_size=4, batch=2, progress=False, fps=40))
    lines = list(watch.run())
    status = lines[-1]
    assert status["type"] == "status" and status["dropped"] > 10  # the stalest frames gave way
    assert status["frames_scored"] + status["dropped"] == status["frames_decoded"] == 64
    assert status["latency_ms_p95"] < 4 * 250 + 500  # bounded by the queue (4 frames), never a growing backlog


def test_sigterm_mid_event_leaves_an_end_line_and_a_playable_clip(run: Path, tmp_path: Path) -> None:
    video = _anomaly_video(tmp_path / "anomaly.avi", fps=10)
    out = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, str(REPO / "run_pipeline.py"), "watch", "--run", str(run), "--source",
                             str(video), "--out", str(out), "--realtime", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    events = out / "events.jsonl"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        if events.is_file() and '"type": "start"' in events.read_text():
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"no event started: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    kinds = [x["type"] for x in lines]
    assert "start" in kinds and "end" in kinds and kinds.index("end") > kinds.index("start")
    end = next(x for x in lines if x["type"] == "end")
    clip = Path(end["clip"])
    with av.open(str(clip)) as c:  # playable: it decodes whole
        n = sum(1 for _ in c.decode(video=0))
    assert n >= 2
    assert Path(end["snapshot"]).is_file() and set(end) >= {"event", "source", "frame", "pts", "wall_time", "score",
                                                          "peak", "branch", "box", "snapshot", "clip"}


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_the_webhook_gets_what_the_file_gets(run: Path, tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received = []
    video = _anomaly_video(tmp_path / "anomaly.avi")
    det = Detector.load(run, device="cpu")
    extra: list[dict] = []  # a sink of the caller's: any callable taking the line
    opts = WatchOptions(out=tmp_path / "w", webhook=f"http://127.0.0.1:{server.server_port}/vad", progress=False,
                        sinks=[extra.append])
    lines = list(Watch(det, str(video), opts).run())
    server.shutdown()
    written = [json.loads(x) for x in (tmp_path / "w" / "events.jsonl").read_text().splitlines()]
    assert written == lines == _Hook.received == extra
    assert {x["type"] for x in written} >= {"start", "end", "status"}  # the scene's anomaly raised an event


def test_a_failing_webhook_never_stops_scoring(run: Path, tmp_path: Path) -> None:
    video = _anomaly_video(tmp_path / "anomaly.avi")
    det = Detector.load(run, device="cpu")
    opts = WatchOptions(webhook=f"http://127.0.0.1:{helpers.free_port()}/nobody", progress=False)
    watch = Watch(det, str(video), opts)
    lines = list(watch.run())
    assert lines[-1]["frames_scored"] == 16  # every frame scored while nobody listened
    (hook,) = [s for s in watch.camera.sinks if isinstance(s, WebhookSink)]
    assert hook.failed == len(lines)  # each line tried (with retries), then counted


def test_source_reads_frames_by_timestamp_to_the_model_rate(tmp_path: Path) -> None:
    """A 30 fps source watched by a model trained at 10 fps: every third frame is scored; indices count all."""
    video = helpers.write_video(tmp_path / "v30.avi", np.concatenate([helpers.frames(i, 16) for i in range(2)]),
                                fps=30)
    src = Source(str(video), fps=10).start()
    got = [i for i in src.items() if isinstance(i, Frame)]
    assert [f.index for f in got] == list(range(0, 32, 3))
    assert [f.seq for f in got] == list(range(len(got)))
    assert np.allclose([f.pts for f in got], [i / 30 for i in range(0, 32, 3)], atol=1e-3)


def test_watch_refuses_what_it_cannot_watch(run: Path, tmp_path: Path, capsys) -> None:
    assert main(["watch", "--run", str(run), "--source", str(tmp_path / "nothing.mp4"), "--out", str(tmp_path)]) == 2
    assert "--source" in capsys.readouterr().err
    (tmp_path / "empty.mp4").write_bytes(b"")  # a recording that never got a byte: an error, not a quiet exit 0
    assert main(["watch", "--run", str(run), "--source", str(tmp_path / "empty.mp4"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --source {tmp_path / 'empty.mp4'}: an empty file (0 bytes); expected a video"]
    assert main(["watch", "--run", str(run), "--source", "rtsp://x", "--out", str(tmp_path / "o"), "--set",
                 "train.epochs=3"]) == 2
    assert "fixed by the trained model" in capsys.readouterr().err


def test_a_gap_item_and_the_end_come_in_order(tmp_path: Path) -> None:
    src = Source(str(helpers.write_video(tmp_path / "v.avi", helpers.frames(0))), fps=10)
    src._put(Gap(1.0, 2.0, 0.5, None, "test"))
    src.start()
    items = list(src.items())
    assert isinstance(items[0], Gap) and isinstance(items[-1], End)
    assert sum(isinstance(i, Frame) for i in items) == 16


def test_a_source_that_changes_resolution_is_scored_on(run: Path) -> None:
    """Frames of another size mid-stream are resized to the model's input like any other: one call, no error."""
    det = Detector.load(run, device="cpu")
    small, large = helpers.frames(0, 4), np.repeat(np.repeat(helpers.frames(1, 4), 2, 1), 2, 2)
    out = det.score([*small, *large], stream="s")
    assert out.scores.shape == (8,) and np.isfinite(out.scores).all()
    again = det.score(list(large), stream="t")  # the large frames alone, a fresh stream: resized alike
    assert np.isfinite(again.scores).all()


def test_the_tracker_turns_rule_changes_into_lines() -> None:
    """An event starts at its first frame above (its peak, box and branch from the frames that opened it), updates
    while it lasts, ends at its last frame above; a reset ends an open event without a frame."""
    rule = CausalRule(1.0, window=1, open_frames=2, close_frames=2, clip="cam", fps=10)
    tracker = EventTracker(rule, "S", branches=("appearance", "motion"), update_every=0.0, recent=8,
                           paths=lambda e: (f"{e}.jpg", f"{e}.mp4"))
    amap = np.zeros((4, 8), np.float32)
    amap[1:3, 2:4] = 1.0  # in a 40x80 frame: x 20..40, y 10..30

    def push(i: int, calibrated: float) -> list:
        f = Frame(i, i, i / 10, 0.0, np.zeros((40, 80, 3), np.uint8))
        return tracker.push(Scored(f, calibrated, amap, np.array([0.0, 1.0])))

    changes = [push(i, c) for i, c in enumerate([0.5, 2.0, 3.0, 2.5, 0.2, 0.1, 0.3])]
    assert [[c.kind for c in cs] for cs in changes] == [[], [], ["peak", "peak", "start"], ["update"], ["update"],
                                                          ["end"], []]
    start, end = changes[2][-1].line, changes[5][0].line
    assert list(start) == ["type", "event", "source", "frame", "pts", "wall_time", "score", "peak", "peak_frame",
                           "branch", "box", "snapshot", "start_frame", "trigger_frame"]
    assert {k: start[k] for k in ("event", "source", "frame", "pts", "score", "peak", "peak_frame", "branch", "box",
                                  "snapshot", "trigger_frame")} == {
        "event": "S-f1", "source": "cam", "frame": 1, "pts": 0.1, "score": 3.0, "peak": 3.0, "peak_frame": 2,
        "branch": "motion", "box": [20, 10, 40, 30], "snapshot": "S-f1.jpg", "trigger_frame": 2}
    assert [c.line["frame"] for c in (*changes[3], *changes[4])] == [3, 4]
    assert (end["frame"], end["pts"], end["score"], end["clip"], end["end_frame"]) == (3, 0.3, None, "S-f1.mp4", 3)
    assert tracker.open is None and tracker.reset() == []
    push(7, 5.0)
    push(8, 5.0)
    (ended,) = tracker.reset()
    assert ended.kind == "end" and ended.line["frame"] == 8 and tracker.open is None


def test_the_stdout_sink_writes_json_lines(capsys) -> None:
    StdoutSink()({"type": "status", "frames_scored": 3})
    assert capsys.readouterr().out == '{"type": "status", "frames_scored": 3}\n'
