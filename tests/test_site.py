"""vad serve: a site's cameras in one process. The site file checked at load; cross-camera batches scoring as each
camera alone; cameras that die, flood or send garbage leaving the others scoring; MQTT through a real broker
(Debian's mosquitto, started here on a free loopback port) down and back; SIGHUP adding a camera; /metrics parsed by
prometheus_client; a stream that starts after vad watch on a fresh run scored (the model exported in the
background)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest

from tests import helpers
from vad.cli import main
from vad.live.detector import Detector

REPO = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="Debian's mosquitto is not installed (apt-get install "
                                  "mosquitto; CI installs it)")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _anomaly_frames(n: int = 50, start: int = 6, stop: int = 14) -> np.ndarray:
    return helpers.paste_anomaly(helpers.frames(50, n), start, stop)


class Broker:
    """mosquitto on a free loopback port (stopped and started again at will: the port stays)."""

    def __init__(self, folder: Path) -> None:
        self.port = helpers.free_port()
        self.conf = _write(folder / "mosquitto.conf", f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                                                      "persistence false\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


class Subscriber:
    """A paho client subscribed to ``vad/#``: every message received, in order."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, str, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{os.getpid()}")
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload.decode(), m.retain))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("vad/#", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def wait(self, test, timeout: float = 30.0) -> bool:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if test(self.messages):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- the site file --------------------------------------------------------------------------------------------------

def _site_file(tmp_path: Path, body: str) -> Path:
    return _write(tmp_path / "site.yaml", body)


@pytest.mark.parametrize(("body", "message"), [
    ("cameras: {a: {source: S, run: R, fps: fast}}", "cameras.a.fps: expected a number, got 'fast'"),
    ("cameras: {a: {source: S, run: R, colour: red}}", "unknown config key cameras.a.colour"),
    ("cameras: {a: {source: S, run: R}}\nmqttt: {}", "unknown key 'mqttt'"),
    ("cameras: {a: {source: S, run: /no/such/run}}", "cameras.a.run: /no/such/run does not exist"),
    ("cameras: {a: {source: S, run: EMPTY}}", "holds no model.pt"),
    ("cameras:\n  a: {source: S, run: R}\n  a: {source: S, run: R}", "line 3: 'a' is given twice (also on line 2)"),
    ("cameras: {a: {source: notaurl.txt, run: R}}", "cameras.a.source: no such file or folder"),
    ("cameras: {a: {run: R}}", "cameras.a.source: missing"),
    ("cameras: {}", "cameras: expected a mapping of camera names"),
    ("cameras: {a: {source: S, run: R}}\nhttp: {port: 70000}", "http.port: got 70000"),
    ("cameras: {a/b: {source: S, run: R}}", "cameras.a/b: a camera name is a folder and an MQTT topic level"),
    # names compared as the folders and topics they become: 1 and "1", true and "True" are one camera
    ("cameras:\n  1: {source: S, run: R}\n  '1': {source: S, run: R}", "line 3: '1' is given twice (also on line 2)"),
    ("cameras:\n  true: {source: S, run: R}\n  'True': {source: S, run: R}", "line 3: 'True' is given twice"),
    ("cameras: {a: {source: 'udp://127.0.0.1:99999', run: R}}", "cameras.a.source: not a stream URL (Port out of"),
    ("cameras: {a: {source: 'udp://127.0.0.1', run: R}}", "cameras.a.source: no port"),
    ("cameras: {a: {source: 'rtsp:///stream', run: R}}", "cameras.a.source: no host"),
    ("cameras: {a: {source: empty.mp4, run: R}}", "cameras.a.source: an empty file (0 bytes)"),
    ("cameras: {a: {source: S, run: R}}\nhttp: {trusted_proxies: [nginx]}", "http.trusted_proxies: 'nginx'"),
])
def test_a_bad_site_file_is_one_error_line(live_run: Path, tmp_path: Path, capsys, body: str, message: str) -> None:
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "empty.mp4").write_bytes(b"")
    video = helpers.write_video(tmp_path / "cam.avi", helpers.frames(0, 4))
    path = _site_file(tmp_path, body.replace("S", str(video)).replace("R", str(live_run)).replace(
        "EMPTY", str(tmp_path / "EMPTY")))
    assert main(["serve", "--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and message in err[0], err


def test_a_good_site_file_checks(live_run: Path, tmp_path: Path, capsys) -> None:
    video = helpers.write_video(tmp_path / "cam.avi", helpers.frames(0, 4))
    path = _site_file(tmp_path, f"cameras:\n  a: {{source: cam.avi, run: {live_run}}}\n"
                                f"  b: {{source: udp://127.0.0.1:5999, run: {live_run}, pre_roll: 1}}\n"
                                "defaults: {post_roll: 2}\nout: site\n")
    assert main(["serve", "--config", str(path), "--check"]) == 0
    assert "2 camera(s), 1 model(s)" in capsys.readouterr().out
    from vad.site import load_site

    site = load_site(path)
    assert site.cameras["a"].source == str(video) and site.out == tmp_path / "site"  # relative to the file
    assert site.cameras["b"].pre_roll == 1.0 and site.cameras["a"].post_roll == site.cameras["b"].post_roll == 2.0


# --- one model, batches across cameras ------------------------------------------------------------------------------

def test_frames_of_several_cameras_in_one_batch_score_as_each_camera_alone(live_run: Path) -> None:
    """Three streams interleaved in batches of mixed composition (a drop in one of them included) give each frame the
    score it gets when its stream is scored alone."""
    det = Detector.load(live_run, device="cpu")
    streams = {"a": _anomaly_frames(20), "b": helpers.frames(1, 20), "c": _anomaly_frames(20, 3, 9)}
    alone = {}
    for name, frames in streams.items():
        alone[name] = np.concatenate([det.score(frames[i:i + 4], stream=f"alone-{name}").scores
                                      for i in range(0, len(frames), 4)])
    rng = np.random.default_rng(0)
    left, order = {name: 0 for name in streams}, []
    while any(k < 20 for k in left.values()):  # interleaved at random, each stream in its own order
        name = str(rng.choice([n for n, k in left.items() if k < 20]))
        order.append((name, left[name]))
        left[name] += 1
    mixed: dict[tuple[str, int], float] = {}
    i = 0
    while i < len(order):
        size = int(rng.integers(1, 9))
        batch = order[i:i + size]
        out = det.score([streams[s][k] for s, k in batch], stream=[s for s, _ in batch], first=[k for _, k in batch])
        mixed.update({key: float(v) for key, v in zip(batch, out.scores, strict=True)})
        i += size
    for name in streams:
        np.testing.assert_allclose([mixed[(name, k)] for k in range(20)], alone[name], rtol=1e-4, atol=1e-4)
    # a stream whose frames skip (a drop) starts its past afresh, as vad watch does
    det.reset("a")
    first = det.score(streams["a"][10:12], stream="a", first=10).scores
    again = det.score(streams["a"][10:12], stream=["a", "a"], first=[10, 11]).scores  # 10 follows 11: a jump back
    fresh = det.score(streams["a"][10:12], stream="z", first=0).scores
    np.testing.assert_allclose(first, fresh, rtol=1e-5)
    np.testing.assert_allclose(again, fresh, rtol=1e-5)


def _serve(config: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run_pipeline.py"), "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except urllib.error.URLError:  # not listening yet
        return 0, b""


def _wait(test, timeout: float) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if test():
            return True
        time.sleep(0.1)
    return False


def _send_udp(port: int, frames: np.ndarray, fps: float) -> None:
    with av.open(f"udp://127.0.0.1:{port}?pkt_size=1316", "w", format="mpegts") as c:
        s = c.add_stream("libx264", rate=int(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"tune": "zerolatency", "preset": "ultrafast", "qp": "0"}
        s.codec_context.gop_size = 10  # a keyframe a second, as cameras send: a reader that joins late decodes
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            time.sleep(1 / fps)
        c.mux(s.encode())


def _send_garbage(port: int, seconds: float) -> None:
    rng = np.random.default_rng(1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            s.sendto(rng.integers(0, 256, 1316, dtype=np.uint8).tobytes(), ("127.0.0.1", port))
            time.sleep(0.002)


@needs_broker
def test_a_site_scores_its_cameras_and_one_bad_camera_stops_none(live_run: Path, tmp_path: Path) -> None:
    """Four cameras on one model: a good replay with the scene's anomaly, a UDP camera sending garbage bytes, an RTSP
    camera nobody serves (refused), and one flooding at 3x its rate. The good camera scores every frame with the
    scores vad watch gives it alone and raises its event, on MQTT and in its files; the others show as what they are;
    health, cameras, events and metrics answer; SIGHUP adds a camera, SIGTERM ends with offline published."""
    from prometheus_client.parser import text_string_to_metric_families

    broker = Broker(tmp_path).start()
    sub = Subscriber(broker.port)
    good = helpers.write_video(tmp_path / "good.avi", _anomaly_frames(60), fps=10)
    garbage, flood, http = helpers.free_port(), helpers.free_port(), helpers.free_port()
    refused = f"rtsp://127.0.0.1:{helpers.free_port()}/nobody"
    cameras = (f"  good: {{source: good.avi, run: {live_run}, realtime: true}}\n"
               f"  garbage: {{source: 'udp://127.0.0.1:{garbage}', run: {live_run}, stall_timeout: 1}}\n"
               f"  refused: {{source: '{refused}', run: {live_run}, open_timeout: 1, stall_timeout: 1}}\n"
               f"  flood: {{source: 'udp://127.0.0.1:{flood}', run: {live_run}, fps: 10, queue_size: 4}}\n")
    rest = (f"out: out\nmqtt: {{port: {broker.port}}}\nhttp: {{port: {http}}}\nbatch: 8\nbackend: torch\n"
            "device: cpu\nstatus_every: 2\n")
    config = _site_file(tmp_path, "cameras:\n" + cameras + rest)
    proc = _serve(config, tmp_path)
    senders = [threading.Thread(target=_send_garbage, args=(garbage, 8.0), daemon=True),
               threading.Thread(target=_send_udp, args=(flood, helpers.frames(2, 150), 30.0), daemon=True)]
    try:
        assert _wait(lambda: _get(f"http://127.0.0.1:{http}/healthz")[0] == 200, 60), proc.stderr.read()
        for t in senders:
            t.start()
        out = tmp_path / "out"
        state = lambda name: json.loads(_get(f"http://127.0.0.1:{http}/api/cameras")[1])[name]["state"]  # noqa: E731
        assert _wait(lambda: state("good") == "down", 60)  # the file replayed to its end
        status, body = _get(f"http://127.0.0.1:{http}/api/cameras")
        cams = json.loads(body)
        assert status == 200 and set(cams) == {"good", "garbage", "refused", "flood"}
        assert cams["good"]["frames_scored"] == 60 and cams["good"]["dropped"] == 0 and cams["good"]["events"] >= 1
        assert cams["refused"]["frames_scored"] == 0 and cams["refused"]["state"] in ("starting", "reconnecting")
        metrics = {s.name: s.value for f in text_string_to_metric_families(_get(f"http://127.0.0.1:{http}/metrics")[1]
                                                                           .decode()) for s in f.samples
                   if s.labels.get("camera") == "good"}
        assert metrics["vad_frames_scored_total"] == 60 and metrics["vad_events_total"] == cams["good"]["events"]
        assert metrics["vad_camera_up"] == 0.0  # down: its file ended
        events = json.loads(_get(f"http://127.0.0.1:{http}/api/events?camera=good")[1])["events"]
        assert [e["type"] for e in events][:1] == ["start"] and events[0]["camera"] == "good"
        assert sub.wait(lambda m: any(t == "vad/events" and json.loads(p)["type"] == "start" for t, p, _ in m))
        assert sub.wait(lambda m: ("vad/good/anomaly", "ON", False) in m or ("vad/good/anomaly", "ON", True) in m)
        assert sub.wait(lambda m: any(t == "vad/good/score" for t, _, _ in m))
        assert sub.wait(lambda m: any(t == "vad/stats" and json.loads(p)["camera"] == "flood" for t, p, _ in m))
        for t in senders:
            t.join(timeout=30)
        assert _wait(lambda: json.loads(_get(f"http://127.0.0.1:{http}/api/cameras")[1])["flood"]["frames_scored"]
                     >= 30, 30)  # sampled to 10 fps of the 30 sent each second
        # SIGHUP: a camera added, the others untouched (the good camera's session, in its event ids, stays)
        _write(config, "cameras:\n" + cameras + f"  late: {{source: good.avi, run: {live_run}}}\n" + rest)
        proc.send_signal(signal.SIGHUP)
        assert _wait(lambda: "late" in json.loads(_get(f"http://127.0.0.1:{http}/api/cameras")[1]), 60)
        assert _wait(lambda: state("late") == "down", 60)
        assert len({x["event"].rsplit("-f", 1)[0] for x in _lines(out / "good" / "events.jsonl") if "event" in x}) == 1
        # a file that no longer checks changes nothing
        _write(config, "cameras: {}\n" + rest)
        proc.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert set(json.loads(_get(f"http://127.0.0.1:{http}/api/cameras")[1])) >= {"good", "late"}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        sub.wait(lambda m: ("vad/available", "offline", False) in m or ("vad/available", "offline", True) in m, 10)
        messages = list(sub.messages)
        sub.close()
        broker.stop()
    assert proc.returncode == 0, err[-3000:]
    assert "the site goes on as it was" in err and "cameras: expected a mapping" in err
    assert ("vad/available", "offline", False) in messages or ("vad/available", "offline", True) in messages
    for name in ("good", "late"):
        kinds = [x["type"] for x in _lines(tmp_path / "out" / name / "events.jsonl")]
        assert kinds.count("start") == kinds.count("end") >= 1 and kinds[-1] == "status"
    # the good camera's events are those vad watch raises on the same file alone: same frames, same peaks
    from vad.live.watch import Watch, WatchOptions

    alone = list(Watch(Detector.load(live_run, device="cpu"), str(good),
                       WatchOptions(out=tmp_path / "alone", progress=False)).run())
    site = _lines(tmp_path / "out" / "good" / "events.jsonl")
    key = lambda x: (x["type"], x["frame"], x["start_frame"], x["peak_frame"], round(x["peak"], 3))  # noqa: E731
    assert [key(x) for x in site if x["type"] in ("start", "end")] == [key(x) for x in alone
                                                                        if x["type"] in ("start", "end")]


@needs_broker
def test_a_broker_down_and_back_loses_nothing_in_the_buffer_and_keeps_order(tmp_path: Path) -> None:
    from vad.site.config import MqttConfig
    from vad.site.mqtt import MqttPublisher

    broker = Broker(tmp_path)  # not started yet: the service starts before its broker
    pub = MqttPublisher(MqttConfig(port=broker.port, buffer=100))
    pub.start()
    for i in range(30):
        pub.line("cam", {"type": "update", "event": "e", "frame": i})
    assert not pub.connected.is_set() and pub.state()["buffered"] >= 30
    broker.start()
    sub = Subscriber(broker.port)
    try:
        assert sub.wait(lambda m: sum(t == "vad/events" for t, _, _ in m) >= 30, 60)
        broker.stop()  # the broker goes away: lines buffer
        for i in range(30, 60):
            pub.line("cam", {"type": "update", "event": "e", "frame": i})
        sub.close()
        broker.start()
        sub = Subscriber(broker.port)
        assert sub.wait(lambda m: any(t == "vad/events" and json.loads(p)["frame"] == 59 for t, p, _ in m), 60)
        frames = [json.loads(p)["frame"] for t, p, _ in sub.messages if t == "vad/events"]
        assert sorted(set(frames)) == list(range(30, 60)) and frames == sorted(frames)  # all, in order
        assert pub.state()["dropped"] == 0
        broker.stop()  # beyond the buffer while away: the oldest dropped, and counted
        assert _wait(lambda: not pub.connected.is_set(), 30)
        for i in range(60, 170):
            pub.line("cam", {"type": "update", "event": "e", "frame": i})
        assert pub.state()["dropped"] == 10 and pub.state()["buffered"] == 100
    finally:
        pub.close(timeout=2)
        sub.close()
        broker.stop()


def test_a_stream_that_starts_after_vad_watch_on_a_fresh_run_is_scored(live_run: Path, tmp_path: Path) -> None:
    """A run never exported, backend auto: vad watch opens its UDP source at once (torch scores while the model is
    exported and measured in the background), so a stream that starts 5 s later has its anomaly raised."""
    pytest.importorskip("onnxruntime", reason="the deploy extra (onnxruntime) makes auto export")
    run = tmp_path / "run"
    shutil.copytree(live_run, run)
    text = (run / "config.yaml").read_text().replace("backend: torch", "backend: auto")
    (run / "config.yaml").write_text(text)
    port = helpers.free_port()
    out = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, str(REPO / "run_pipeline.py"), "watch", "--run", str(run), "--source",
                             f"udp://127.0.0.1:{port}", "--out", str(out), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        time.sleep(5.0)
        _send_udp(port, _anomaly_frames(120, 80, 90), 10.0)  # the runner 8 s into the stream
        assert _wait(lambda: [x for x in _lines(out / "events.jsonl") if x["type"] == "status"], 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        said, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    lines = _lines(out / "events.jsonl")
    decoded = lines[-1]["frames_decoded"]
    assert decoded >= 60, lines[-1]  # the source was open within seconds: it joined the stream early
    runner = range(80 - (120 - decoded), 90 - (120 - decoded))  # the runner's frames as the watcher counted them
    spans = [(x["start_frame"], x.get("end_frame", 10**9)) for x in lines if x["type"] in ("start", "end")]
    assert any(a <= runner[-1] and b >= runner[0] for a, b in spans), (spans, runner)
    assert "scoring with torch while the model is exported" in said, said


def test_a_fresh_run_on_auto_goes_live_on_the_backend_score_picks(live_run: Path, scene: Path, tmp_path: Path,
                                                                   caplog) -> None:
    """A run never exported, backend auto, opened for a stream: torch scores at once; the background preparation
    exports and measures as `vad score --backend auto` does, and the stream then scores with the backend that
    command picks (it stayed on torch for good when the preparation measured nothing)."""
    import logging

    pytest.importorskip("onnxruntime", reason="the deploy extra (onnxruntime) makes auto export")
    from vad.runs import RunFolder, read_manifest

    run = tmp_path / "run"
    shutil.copytree(live_run, run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("backend: torch", "backend: auto"))
    logger = logging.getLogger("vad")
    logger.addHandler(caplog.handler)  # the CLI's console logging keeps vad's records from the root logger
    try:
        with caplog.at_level(logging.INFO, logger="vad"):
            det = Detector.load(run, device="cpu", background=True)
            assert det.backend == "torch" and det.preparing is not None  # open at once
            det.preparing.join(timeout=400)
            assert not det.preparing.is_alive()
    finally:
        logger.removeHandler(caplog.handler)
    assert "failed" not in caplog.text, caplog.text
    assert "measured on this machine" in caplog.text
    clip = next((scene / "testing" / "frames").iterdir())
    assert main(["score", "--run", str(run), "--backend", "auto", "--input", str(clip), "--device", "cpu"]) == 0
    picked = {r.backend for r in read_manifest(RunFolder(run)).values() if Path(r.path) == clip.resolve()}
    assert picked == {det.backend}, (picked, det.backend)
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    assert np.isfinite(det.score(frames).scores).all()  # and it scores with it
    det.close()
