"""The site's HTTP app built against a fake read interface (no camera, no model): every route's answer and status,
the door's 401/403/429 and the bodies' 400/413/415; and events.jsonl's owner (append, read, tail since, has,
rewrite), whose second read parses nothing again."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from vad.errors import InputError, UnknownEventError, UsageError
from vad.live.eventlog import EventLog, event_log
from vad.site.auth import MAX_FAILURES, Sessions, Throttle, UsersFile
from vad.site.core import EventLine, Stopping, Verdict, Written
from vad.site.http import Gate, site_app

PASSWORD = "correct horse battery"
ORIGIN = {"Origin": "http://testserver"}


class FakeView:
    """A :class:`vad.site.core.SiteView` of two cameras, ``a`` (a frame, an event with a snapshot and a clip) and
    ``b`` (nothing scored yet), under ``root``."""

    title = "fake"

    def __init__(self, root: Path) -> None:
        self.root, self.ok, self.kept = root, True, None
        self.subscribers: list = []
        self.recorded: list[tuple[str, str, str]] = []
        self.lines = [{"type": "start", "event": "e1", "wall_time": "2024-01-01T00:00:00.000Z", "camera": "a"},
                      {"type": "gap", "wall_time": "2024-01-01T00:00:05.000Z", "camera": "b"},
                      {"type": "end", "event": "e1", "wall_time": "2024-01-01T00:00:09.000Z", "camera": "a"}]
        for kind, name in (("snapshots", "e1.jpg"), ("clips", "e1.mp4"), ("clips", "note.txt")):
            (root / "a" / kind).mkdir(parents=True, exist_ok=True)
            (root / "a" / kind / name).write_bytes(b"evidence of " + name.encode())
        (root / "secret.mp4").write_bytes(b"not evidence")

    def camera_names(self) -> list[str]:
        return ["a", "b"]

    def healthy(self) -> bool:
        return self.ok

    def camera_states(self) -> dict[str, dict]:
        return {n: {"state": "scoring", "fps_scored": 5.0, "fps_in": 5.0, "frames_scored": 10, "dropped": 0,
                    "events": 1} for n in self.camera_names()}

    def camera_history(self, name: str, seconds: int) -> list[tuple[int, float]]:
        return [(0, 0.5)] * min(seconds, 2)

    def latest_seq(self, name: str) -> int | None:
        return 7 if name == "a" else None

    def picture(self, name: str) -> tuple[int, bytes] | None:
        return (7, b"\xff\xd8jpeg") if name == "a" else None

    def event_lines(self, cameras: list[str], since: str | None) -> list[dict]:
        return [x for x in self.lines if x["camera"] in cameras and (since is None or x["wall_time"] >= since)]

    def feed(self, camera: str | None) -> list[dict]:
        return [{"id": "a/e1", "camera": "a", "event": "e1", "open": False}] if camera in (None, "a") else []

    def clips(self, camera: str) -> bool:
        return camera == "a"

    def media_root(self, camera: str) -> Path | None:
        return self.root / camera if camera in self.camera_names() else None

    def verdicts(self) -> tuple[dict[str, dict], list[str]]:
        return {"a/e1": {"verdict": "normal"}}, ["run/feedback.jsonl:3"]

    def record_verdict(self, key: str, verdict: str, via: str) -> dict:
        errors = {"a/nope": UnknownEventError("unknown event"), "a/open": InputError("footage not written yet")}
        if key in errors:
            raise errors[key]
        if verdict not in ("normal", "anomaly"):
            raise UsageError(f"verdict {verdict!r}")
        self.recorded.append((key, verdict, via))
        return {"event": key, "verdict": verdict, "via": via}

    def storage(self) -> dict | None:
        return self.kept

    def metrics_text(self) -> bytes:
        return b"# TYPE vad_camera_fps gauge\nvad_camera_fps{camera=\"a\"} 5.0\n"

    def subscribe(self, fn) -> None:
        self.subscribers.append(fn)


@pytest.fixture(scope="module")
def users(tmp_path_factory) -> tuple[UsersFile, str]:
    users = UsersFile(tmp_path_factory.mktemp("door") / "site.auth.json")
    users.add_user("alice", PASSWORD)
    return users, users.add_token("script")


@pytest.fixture
def room(tmp_path: Path, users, monkeypatch) -> tuple[TestClient, FakeView, dict]:
    monkeypatch.setattr("vad.site.http.FAIL_DELAY", 0.0)
    view = FakeView(tmp_path)
    gate = Gate(users[0], Sessions(1.0), Throttle(), open=False)
    client = TestClient(site_app(view, gate), raise_server_exceptions=True)
    return client, view, {"Authorization": f"Bearer {users[1]}"}


def test_the_door_lets_in_a_login_or_a_token_and_counts_failures(room) -> None:
    client, _, token = room
    assert client.get("/healthz").json() == {"status": "ok"}  # open to all
    assert client.get("/login").status_code == 200 and "<form" in client.get("/login").text.lower()
    assert client.get("/").status_code == 401 and "/login" in client.get("/").text  # a page: sent to log in
    for path in ("/api/cameras", "/api/events", "/api/feed", "/api/feedback", "/api/storage", "/metrics",
                 "/api/cameras/a/frame.jpg", "/media/a/clips/e1.mp4"):
        assert client.get(path).status_code == 401, path
    assert client.get("/api/cameras", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/cameras", headers=token).status_code == 200
    # bodies: not an object, a field missing, not strings, too large
    for body in ("[1]", "{}", '{"user": 1, "password": 2}', "nope", "[" * 5000 + "]" * 5000):
        assert client.post("/api/login", content=body, headers=ORIGIN).status_code == 400, body
    big = json.dumps({"user": "alice", "password": "x" * 20000})
    assert client.post("/api/login", content=big, headers=ORIGIN).status_code == 413
    login = {"user": "alice", "password": PASSWORD}
    assert client.post("/api/login", json=login).status_code == 403  # no Origin: not this server's page
    assert client.post("/api/login", json=login, headers={"Origin": "http://evil.example"}).status_code == 403
    r = client.post("/api/login", json=login, headers=ORIGIN)
    assert r.status_code == 200 and r.json() == {"user": "alice"}
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert client.get("/api/cameras").status_code == 200  # the session's cookie
    assert client.post("/api/logout", headers=ORIGIN).json() == {"user": None}
    client.cookies.clear()
    assert client.get("/api/cameras").status_code == 401
    wrong = {"user": "alice", "password": "wrong password"}
    codes = [client.post("/api/login", json=wrong, headers=ORIGIN).status_code for _ in range(MAX_FAILURES + 1)]
    assert codes == [401] * MAX_FAILURES + [429]
    r = client.post("/api/login", json=login, headers=ORIGIN)  # blocked: even the right password waits
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    metrics = client.get("/metrics", headers=token)
    assert metrics.status_code == 200 and 'vad_camera_fps{camera="a"} 5.0' in metrics.text
    assert f"vad_login_failures_total {float(MAX_FAILURES)}" in metrics.text  # the 429s are no tries


def test_health_cameras_frames_and_storage(room) -> None:
    client, view, token = room
    view.ok = False
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "down"}
    cams = client.get("/api/cameras", headers=token)
    assert cams.status_code == 200 and set(cams.json()) == {"a", "b"} and "history" not in cams.json()["a"]
    cams = client.get("/api/cameras?history=5", headers=token).json()
    assert cams["a"]["history"] == [[0, 0.5], [0, 0.5]]
    assert client.get("/api/cameras?history=soon", headers=token).status_code == 400
    frame = client.get("/api/cameras/a/frame.jpg", headers=token)
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
    assert frame.content == b"\xff\xd8jpeg"
    assert "no frame" in client.get("/api/cameras/b/frame.jpg", headers=token).json()["error"]
    assert client.get("/api/cameras/b/frame.jpg", headers=token).status_code == 404
    assert client.get("/api/cameras/zz/frame.jpg", headers=token).status_code == 404
    assert client.get("/api/storage", headers=token).status_code == 503
    view.kept = {"bytes": 10, "max_bytes": 100, "cameras": {}, "retain_days": {}, "text": "10 B"}
    assert client.get("/api/storage", headers=token).json() == view.kept
    r = client.get("/api/nothing", headers=token)
    assert r.status_code == 404 and "GET /api/nothing" in r.json()["error"]


def test_events_feed_and_media(room) -> None:
    client, _, token = room
    r = client.get("/api/events", headers=token)
    assert r.status_code == 200 and [x["type"] for x in r.json()["events"]] == ["start", "gap", "end"]
    assert [x["type"] for x in client.get("/api/events?limit=1", headers=token).json()["events"]] == ["end"]
    assert [x["camera"] for x in client.get("/api/events?camera=b", headers=token).json()["events"]] == ["b"]
    since = client.get("/api/events?since=2024-01-01T00:00:05", headers=token).json()["events"]
    assert [x["type"] for x in since] == ["gap", "end"]
    assert client.get("/api/events?limit=0", headers=token).status_code == 400
    assert client.get("/api/events?limit=x", headers=token).status_code == 400
    assert client.get("/api/events?camera=zz", headers=token).status_code == 404
    assert client.get("/api/feed", headers=token).json() == {"events": [{"id": "a/e1", "camera": "a", "event": "e1",
                                                                         "open": False}]}
    assert client.get("/api/feed?camera=b", headers=token).json() == {"events": []}
    snap = client.get("/media/a/snapshots/e1.jpg", headers=token)
    assert snap.status_code == 200 and snap.content == b"evidence of e1.jpg"
    clip = client.get("/media/a/clips/e1.mp4", headers=token)
    assert clip.status_code == 200 and clip.content == b"evidence of e1.mp4"
    for path in ("/media/a/clips/note.txt", "/media/a/footage/e1.mp4", "/media/zz/clips/e1.mp4",
                 "/media/a/clips/..%2F..%2Fsecret.mp4", "/media/a/clips/.hidden.mp4", "/media/a/clips/e9.mp4"):
        assert client.get(path, headers=token).status_code == 404, path


def test_verdicts_read_and_recorded(room) -> None:
    client, view, token = room
    r = client.get("/api/feedback", headers=token)
    assert r.status_code == 200 and r.json() == {"verdicts": {"a/e1": {"verdict": "normal"}},
                                                 "unreadable_lines": ["run/feedback.jsonl:3"]}

    def post(body: object, **headers) -> int:
        return client.post("/api/feedback", json=body, headers={**token, **headers}).status_code

    assert post({"event": "a/e1", "verdict": "anomaly"}) == 200
    assert view.recorded == [("a/e1", "anomaly", "site:token:script")]
    assert post({"event": "a/nope", "verdict": "normal"}) == 404
    assert post({"event": "a/open", "verdict": "normal"}) == 409
    assert post({"event": "a/e1", "verdict": "maybe"}) == 400
    assert post({"event": "e1", "verdict": "normal"}) == 400  # not CAMERA/EVENT
    assert post({"event": "a/e1"}) == 400
    assert client.post("/api/feedback", content="event=a/e1", headers={**token, "Content-Type": "text/plain"}
                       ).status_code == 415
    big = {"event": "a/e1", "verdict": "x" * 20000}
    assert post(big) == 413
    # a browser's POST with its session needs this server's Origin
    client.post("/api/login", json={"user": "alice", "password": PASSWORD}, headers=ORIGIN)
    assert client.post("/api/feedback", json={"event": "a/e1", "verdict": "normal"}).status_code == 403
    r = client.post("/api/feedback", json={"event": "a/e1", "verdict": "normal"}, headers=ORIGIN)
    assert r.status_code == 200 and r.json()["via"] == "site:alice"


def test_the_stream_sends_the_site_s_events_until_it_stops(room) -> None:
    client, view, token = room
    (feed,) = view.subscribers  # the app's live feed subscribed to the site

    def publish() -> None:
        deadline = time.monotonic() + 10
        while not feed._subs and time.monotonic() < deadline:
            time.sleep(0.01)
        feed(EventLine("a", {"type": "start", "event": "e2", "wall_time": "T", "peak": 2.0, "snapshot": "x"}))
        feed(EventLine("a", {"type": "status"}))  # not an event's: nothing sent
        feed(Written("a", "clip", "e2", "/out/a/clips/e2.mp4"))
        feed(Verdict("a/e2", {"verdict": "anomaly"}))
        feed(Stopping())

    threading.Thread(target=publish, daemon=True).start()
    with client.stream("GET", "/api/stream", headers=token) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert data[0] == {"kind": "event", "item": {"id": "a/e2", "camera": "a", "event": "e2", "peak": 2.0,
                                                 "branch": None, "snapshot": "/media/a/snapshots/e2.jpg",
                                                 "start_time": "T", "open": True, "clip_ready": False,
                                                 "clip": "/media/a/clips/e2.mp4"}}
    assert data[1:] == [{"kind": "written", "id": "a/e2", "what": "clip"},
                        {"kind": "verdict", "id": "a/e2", "line": {"verdict": "anomaly"}}]


# --- events.jsonl's owner -------------------------------------------------------------------------------------------

def test_the_event_log_appends_reads_tails_and_rewrites_without_parsing_twice(tmp_path: Path) -> None:
    path = tmp_path / "cam" / "events.jsonl"
    log = event_log(path)
    assert event_log(tmp_path / "cam" / "events.jsonl") is log and log.lines() == [] and not log.has("e1")
    lines = [{"type": "start", "event": "e1", "wall_time": "2024-01-01T00:00:00Z"},
             {"type": "status", "wall_time": "2024-01-01T00:00:01Z"},
             {"type": "end", "event": "e1", "wall_time": "2024-01-02T00:00:00Z"}]
    for line in lines:
        log.append(line)
    assert [x["type"] for x in log.lines()] == ["start", "end"]  # the status line is not read back
    assert log.lines(since="2024-01-02") == [lines[2]] and log.has("e1") and not log.has("e2")
    parsed = log.parsed
    assert log.lines() == [lines[0], lines[2]] and log.parsed == parsed  # no re-read of an unchanged file
    # another writer (another process): only its bytes are read; a torn last line waits for its newline
    with path.open("a") as fh:
        fh.write(json.dumps({"type": "gap", "wall_time": "2024-01-03T00:00:00Z"}) + "\nnot json\n{\"type\": \"st")
    assert [x["type"] for x in log.lines()] == ["start", "end", "gap"] and log.parsed == parsed + 2
    with path.open("a") as fh:
        fh.write('art", "event": "e2", "wall_time": "2024-01-04T00:00:00Z"}\n')
    assert log.has("e2") and log.parsed == parsed + 3
    assert log.lines(since="2024-01-03")[-1]["event"] == "e2"
    # retention: lines before a time go, atomically; appends go on in the new file
    removed = log.rewrite(lambda x: x.get("wall_time", "") >= "2024-01-02")
    assert removed == 2 and log.has("e2") and [x["type"] for x in log.lines()] == ["end", "gap", "start"]
    log.append({"type": "end", "event": "e2", "wall_time": "2024-01-05T00:00:00Z"})
    log.close()
    assert "not json" in path.read_text() and path.read_text().count("\n") == 5
    fresh = EventLog(path)  # a reader of its own (another process) sees the same lines
    assert fresh.lines() == log.lines() and fresh.has("e2") and fresh.lines()[0]["type"] == "end"
