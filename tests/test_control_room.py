"""The control room (vad serve's page and API): who may reach it, what it serves, how long it keeps events.

Logins: beyond loopback no start without users (one error line); every route but /healthz and the login answers 401
without a session or token; a wrong password is refused, slowed and counted, then the address is refused; a right
one lets in with an HttpOnly, SameSite=Strict cookie; a cross-origin POST is refused; /../ and its encodings never
leave the site's folders; HTTPS with http.tls. Retention: the oldest go first within the bound, events with a verdict
last, events past their days go whatever their verdict. In a real browser (Debian's Chromium): three loopback
cameras, a runner in one; its event in the feed within 2 s of its start line, its snapshot shown, its clip played
once written, `n` recording the verdict in the camera's run; after vad adapt, the same footage raises a lower peak.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import helpers
from tests.test_site import _anomaly_frames, _lines, _send_udp, _wait
from vad.cli import main

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery"


def _site(tmp_path: Path, run: Path, cameras: str, http: str, extra: str = "") -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(f"cameras:\n{cameras}out: out\nhttp: {{{http}}}\nbatch: 8\nbackend: torch\ndevice: cpu\n"
                    f"status_every: 2\n{extra}")
    return path


class Running:
    """A site served in a thread of this process (stopped on exit)."""

    def __init__(self, config: Path) -> None:
        from vad.site import Site

        self.site = Site.load(config)
        self.thread = threading.Thread(target=self.site.run, kwargs={"handle_signals": False}, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        assert _wait(lambda: self.site.http is not None and self.site.http.thread.is_alive(), 60)
        assert _wait(lambda: _status(f"{self.url}healthz") in (200, 503), 30)  # answering (503: every camera down)
        return self

    @property
    def url(self) -> str:
        scheme = self.site.http.url.split(":", 1)[0]
        return f"{scheme}://127.0.0.1:{self.site.http.port}/"

    def __exit__(self, *exc) -> None:
        self.site.stop()
        self.thread.join(timeout=60)


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5, verify=False).status_code
    except httpx.HTTPError:
        return 0


def _add_user(config: Path, name: str = "alice", password: str = PASSWORD, monkeypatch=None) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    assert main(["serve", "--config", str(config), "--add-user", name, "--password-stdin"]) == 0


# --- the door -------------------------------------------------------------------------------------------------------

def test_beyond_loopback_without_users_refuses_to_start(live_run: Path, tmp_path: Path, capsys) -> None:
    video = helpers.write_video(tmp_path / "cam.avi", helpers.frames(1, 20))
    config = _site(tmp_path, live_run, f"  cam: {{source: {video}, run: {live_run}}}\n", "host: 0.0.0.0, port: 0")
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: http.host 0.0.0.0: serving beyond this machine needs a login")
    assert not (tmp_path / "out").exists()  # refused before any camera opened
    assert main(["serve", "--config", str(config), "--check"]) == 2  # --check says it too


def test_every_route_needs_a_login_beyond_loopback(live_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    helpers.write_video(tmp_path / "cam.avi", _anomaly_frames(40))
    (tmp_path / "secret.txt").write_text("not for the network")
    config = _site(tmp_path, live_run, f"  cam: {{source: cam.avi, run: {live_run}}}\n", "host: 0.0.0.0, port: 0")
    _add_user(config, monkeypatch=monkeypatch)
    assert main(["serve", "--config", str(config), "--add-token", "prometheus"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    users = json.loads((tmp_path / "site.auth.json").read_text())
    assert users["users"]["alice"]["hash"].startswith("$argon2id$") and PASSWORD not in json.dumps(users)
    assert token not in json.dumps(users) and oct((tmp_path / "site.auth.json").stat().st_mode & 0o777) == "0o600"
    with Running(config) as room:
        url = room.url
        assert _wait(lambda: room.site.camera("cam").state == "down", 60)  # the file replayed: events written
        event = next(x["event"] for x in _lines(tmp_path / "out" / "cam" / "events.jsonl") if x["type"] == "start")
        # its post-roll (3 s: 30 frames after its end, about frame 18) runs past the file's 40 frames: the clip is
        # finished when the camera goes down, not left unfinished until the service stops
        assert _wait(lambda: (tmp_path / "out" / "cam" / "clips" / f"{event}.mp4").is_file(), 30)
        routes = ["", "api/cameras", "api/cameras/cam/frame.jpg", "api/events", "api/feed", "api/stream",
                  "api/feedback", "api/storage", f"media/cam/snapshots/{event}.jpg", f"media/cam/clips/{event}.mp4",
                  "metrics", "nothing-here"]
        for path in routes:
            r = httpx.get(url + path, timeout=5)
            assert r.status_code == 401, (path, r.status_code)
            assert b"not for the network" not in r.content
        assert httpx.post(url + "api/feedback", json={"event": f"cam/{event}", "verdict": "normal"},
                          headers={"Origin": url.rstrip("/")}).status_code == 401
        assert httpx.get(url + "healthz").status_code == 503  # no login needed: it says the camera is down
        assert httpx.get(url + "login").status_code == 200
        # a wrong password: refused, slowed, counted; a right one: a session cookie
        t0 = time.monotonic()
        r = httpx.post(url + "api/login", json={"user": "alice", "password": "wrong"}, headers={"Origin": url[:-1]})
        assert r.status_code == 401 and time.monotonic() - t0 >= 0.9 and "set-cookie" not in r.headers
        r = httpx.post(url + "api/login", json={"user": "nobody", "password": PASSWORD}, headers={"Origin": url[:-1]})
        assert r.status_code == 401
        r = httpx.post(url + "api/login", json={"user": "alice", "password": PASSWORD}, headers={"Origin": url[:-1]})
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert "Secure" not in cookie  # plain HTTP here
        with httpx.Client(base_url=url, cookies=r.cookies, timeout=10) as s:
            for path in routes[:-1]:
                if path == "api/stream":
                    with s.stream("GET", path) as st:
                        assert st.status_code == 200 and st.headers["content-type"].startswith("text/event-stream")
                    continue
                assert s.get(path).status_code == 200, path
            page = s.get("").text
            assert 'id="grid"' in page and "vad control room" in page
            # a POST from another origin, or with none, is refused; from this one it is taken
            body = {"event": f"cam/{event}", "verdict": "anomaly"}
            assert s.post("api/feedback", json=body, headers={"Origin": "http://evil.example"}).status_code == 403
            assert s.post("api/feedback", json=body).status_code == 403
            r = s.post("api/feedback", json=body, headers={"Origin": url[:-1]})
            assert r.status_code == 200 and r.json()["event"] == f"cam/{event}" and r.json()["via"] == "site:alice"
            assert s.post("api/feedback", json={"event": "cam/nope", "verdict": "normal"},
                          headers={"Origin": url[:-1]}).status_code == 404
            # nothing outside the site's evidence folders, whatever the URL
            for path in ["media/cam/clips/../../../secret.txt", "media/cam/clips/..%2F..%2F..%2Fsecret.txt",
                         "media/cam/clips/%2e%2e/%2e%2e/%2e%2e/secret.txt", "media/cam/..%2Fcam/events.jsonl",
                         "media/cam/clips/%252e%252e%252fsecret.txt", "media/..%2F..%2Fsecret.txt/clips/x.mp4",
                         "media/cam/events.jsonl/x", f"media/cam/footage/{event}.mp4", "media/cam/clips/.lock",
                         "media/cam/clips/..\\..\\..\\secret.txt", "media/cam/clips//etc/passwd"]:
                r = s.get(path)
                assert r.status_code in (404, 400) and b"not for the network" not in r.content, path
                assert b"root:" not in r.content, path
            s.post("api/logout", headers={"Origin": url[:-1]})
            assert s.get("api/cameras").status_code == 401  # the session is gone
        # a script's token: metrics and the API, no cookie, no Origin
        r = httpx.get(url + "metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "vad_login_failures_total 2.0" in r.text
        assert httpx.get(url + "metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        # too many failures from one address: refused before the password is even checked
        for _ in range(3):
            httpx.post(url + "api/login", json={"user": "alice", "password": "bad"}, headers={"Origin": url[:-1]})
        r = httpx.post(url + "api/login", json={"user": "alice", "password": PASSWORD}, headers={"Origin": url[:-1]})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_an_open_loopback_room_answers_only_loopback_names(live_run: Path, tmp_path: Path) -> None:
    video = helpers.write_video(tmp_path / "cam.avi", helpers.frames(1, 20))
    config = _site(tmp_path, live_run, f"  cam: {{source: {video}, run: {live_run}}}\n", "port: 0")
    with Running(config) as room:
        assert httpx.get(room.url + "api/cameras").status_code == 200  # no users, loopback: open as before
        assert httpx.get(room.url + "api/cameras", headers={"Host": "attacker.example"}).status_code == 403
        assert httpx.post(room.url + "api/feedback", json={"event": "cam/x", "verdict": "normal"},
                          headers={"Origin": "http://attacker.example"}).status_code == 403


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_serves_https_with_a_secure_cookie(live_run: Path, tmp_path: Path, monkeypatch) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")], check=True,
                   capture_output=True)
    video = helpers.write_video(tmp_path / "cam.avi", helpers.frames(1, 20))
    config = _site(tmp_path, live_run, f"  cam: {{source: {video}, run: {live_run}}}\n",
                   "host: 0.0.0.0, port: 0, tls: {cert: cert.pem, key: key.pem}")
    _add_user(config, monkeypatch=monkeypatch)
    with Running(config) as room:
        url = room.url
        assert url.startswith("https://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https:", "http:") + "healthz", timeout=5)  # plain HTTP is not spoken
        r = httpx.post(url + "api/login", json={"user": "alice", "password": PASSWORD}, verify=False,
                       headers={"Origin": url[:-1]})
        assert r.status_code == 200 and "Secure" in r.headers["set-cookie"]
        assert httpx.get(url + "api/cameras", verify=False).status_code == 401


# --- retention ------------------------------------------------------------------------------------------------------

def _evidence(out: Path, camera: str, event: str, age_days: float, size: int, now: float) -> None:
    for kind, ext in (("snapshots", ".jpg"), ("clips", ".mp4"), ("footage", ".mp4")):
        p = out / camera / kind / f"{event}{ext}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
        os.utime(p, (now - age_days * 86400, now - age_days * 86400))


def test_retention_deletes_the_oldest_first_within_the_bound_and_judged_last(tmp_path: Path) -> None:
    from vad.site.retention import sweep

    now = time.time()
    out = tmp_path / "out"
    for i, age in enumerate([0.5, 1.5, 2.5, 3.5, 4.5]):  # e0 newest ... e4 oldest: 3 MB each (3 files of 1 MB)
        _evidence(out, "a", f"e{i}", age, 1_000_000, now)
    _evidence(out, "b", "old", 9.0, 1_000_000, now)  # past b's 8 days
    _evidence(out, "b", "open", 0.1, 1_000_000, now)
    lines = [{"type": "start", "event": "old", "wall_time": "2000-01-01T00:00:00.000Z"},
             {"type": "start", "event": "open", "wall_time": "2999-01-01T00:00:00.000Z"}]
    (out / "b" / "events.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cams = {"a": {"retain_days": 7.0, "busy": set(), "judged": {"e4"}, "camera": None},
            "b": {"retain_days": 8.0, "busy": {"open"}, "judged": {"old"}, "camera": None}}
    kept = sweep(out, cams, max_bytes=10_000_000, now=now)
    left = {p.stem for p in (out / "a" / "clips").iterdir()}
    # 5 x 3 MB + 3 MB open = 18 MB > 10: e3 then e2 then e1 go (oldest without a verdict first); e4 (judged) stays
    assert left == {"e0", "e4"}
    assert not (out / "b" / "clips" / "old.mp4").exists()  # past its days, verdict or not
    assert (out / "b" / "clips" / "open.mp4").exists()  # open: never touched
    assert [x["event"] for x in _lines(out / "b" / "events.jsonl")] == ["open"]  # the old lines went too
    assert kept.bytes == 6_000_000 and kept.cameras["a"]["events"] == 2 and "of 0.01 GB" in kept.text()
    # a tighter bound: the newest without a verdict goes before the older one with a verdict
    sweep(out, cams, max_bytes=7_000_000, now=now)
    assert {p.stem for p in (out / "a" / "clips").iterdir()} == {"e4"}
    sweep(out, cams, max_bytes=1, now=now)  # then the judged; never the open one
    assert not list((out / "a" / "clips").iterdir()) and (out / "b" / "clips" / "open.mp4").exists()


def test_retention_counts_clips_being_written_and_sweeps_a_killed_watch_s_leftovers(tmp_path: Path) -> None:
    from vad.site.retention import STALE, sweep

    now = time.time()
    out = tmp_path / "out"
    _evidence(out, "a", "e0", 0.5, 1_000_000, now)
    writing = out / "a" / "clips" / ".vad-tmp.e1.123.mp4"  # a clip being written: counted, never deleted
    writing.write_bytes(b"x" * 2_000_000)
    left = out / "a" / "footage" / ".vad-tmp.e9.77.mp4"  # a killed watch's, untouched for longer than STALE
    left.write_bytes(b"x" * 5_000_000)
    os.utime(left, (now - STALE - 60, now - STALE - 60))
    cams = {"a": {"retain_days": 7.0, "busy": set(), "judged": set(), "camera": None}}
    kept = sweep(out, cams, max_bytes=4_000_000, now=now)
    assert writing.exists() and not left.exists()
    # 3 MB of e0 + 2 MB being written > 4 MB: e0 goes (the clip being written counts in the bound)
    assert not (out / "a" / "clips" / "e0.mp4").exists() and kept.deleted_events == 1


# --- in a real browser ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


STILL = ("HTMLMediaElement.prototype.play = function () { window.played = this.currentSrc; "
         "return Promise.resolve(); };")
SEEN = """
window.seen = {};
new MutationObserver(() => document.querySelectorAll('.card[data-event]').forEach((c) => {
  if (!window.seen[c.dataset.event]) window.seen[c.dataset.event] = Date.now();
})).observe(document, {childList: true, subtree: true});
"""


def test_the_live_page_shows_cameras_and_events_and_takes_verdicts_that_adapt_learns(
        browser, live_run: Path, tmp_path: Path, monkeypatch) -> None:
    from vad.live.detector import Detector

    run = tmp_path / "run"
    shutil.copytree(live_run, run)
    runner = helpers.paste_anomaly(helpers.frames(50, 80), 40, 54)  # the scene's anomaly: a checkerboard crossing
    calm = helpers.frames(3, 100)
    ports = [helpers.free_port() for _ in range(3)]
    cameras = "".join(f"  {n}: {{source: 'udp://127.0.0.1:{p}', run: {run}, fps: 10, post_roll: 1, pre_roll: 1, "
                      "stall_timeout: 2}\n"
                      for n, p in zip(("door", "hall", "yard"), ports, strict=True))
    config = _site(tmp_path, run, cameras, "host: 0.0.0.0, port: 0")
    _add_user(config, monkeypatch=monkeypatch)
    anomaly = slice(40, 60)  # its frames and a few after
    before = float(Detector.load(run, device="cpu").score(list(runner)).calibrated[anomaly].max())
    with Running(config) as room:
        senders = [threading.Thread(target=_send_udp, args=(ports[0], runner, 10.0), daemon=True),
                   *(threading.Thread(target=_send_udp, args=(p, calm, 10.0), daemon=True) for p in ports[1:])]
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # (a 401 before the login; a 404 for a snapshot asked for a moment before it is written: the page asks again)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not any(
            f"status of {code}" in m.text for code in (401, 404)) else None)
        page.add_init_script(STILL + SEEN)
        page.goto(room.url)
        page.wait_for_url("**/login")
        page.fill("#user", "alice")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#grid")
        for t in senders:
            t.start()
        # the grid: three tiles, each with its latest frame, state and rates
        page.wait_for_function("() => document.querySelectorAll('.tile.pic[data-camera]').length === 3", timeout=60000)
        assert sorted(page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.camera)")) == ["door", "hall",
                                                                                                      "yard"]
        assert page.eval_on_selector('.tile[data-camera="hall"] img', "i => i.naturalWidth") == helpers.W
        assert "scoring" in page.inner_text('.tile[data-camera="hall"] .state')
        assert "frames/s scored" in page.inner_text('.tile[data-camera="hall"] .rates')
        # the runner's event: in the feed within 2 s of its start line, with its snapshot
        events = room.site.cfg.out / "door" / "events.jsonl"
        assert _wait(lambda: any(x["type"] == "start" for x in _lines(events)), 60)
        start = next(x for x in _lines(events) if x["type"] == "start")
        key = f"door/{start['event']}"
        page.wait_for_function(f"() => window.seen[{json.dumps(key)}]", timeout=10000)
        seen_ms = page.evaluate(f"() => window.seen[{json.dumps(key)}]")
        from datetime import datetime

        written = datetime.fromisoformat(start["wall_time"].replace("Z", "+00:00")).timestamp() * 1000
        assert seen_ms - written < 2000, seen_ms - written
        card = page.locator(f'.card[data-event="{key}"]')
        page.wait_for_function(f"() => document.querySelector('.card[data-event=\"{key}\"] img').naturalWidth > 0",
                               timeout=15000)
        # a click plays its clip once written (pre-roll included: the clip starts before the event)
        card.locator("h3").click()
        page.wait_for_function("() => window.played !== undefined", timeout=60000)
        assert page.evaluate("() => window.played").endswith(f"/media/door/clips/{start['event']}.mp4")
        assert page.evaluate("() => document.querySelector('video').currentTime") == 0
        # `n`: the verdict, in the camera's run, with the footage adapt learns from
        page.keyboard.press("n")
        page.wait_for_function(f"() => document.querySelector('.card[data-event=\"{key}\"] .v.normal')",
                               timeout=10000)
        line = _lines(run / "feedback.jsonl")[-1]
        assert (line["event"], line["verdict"], line["camera"]) == (key, "normal", "door")
        assert (run / line["footage"]).is_file() and line["start"] < line["end"]
        assert page.locator("#kept").inner_text().startswith("kept: ")
        page.screenshot(path=str(tmp_path / "room.png"))
        for t in senders:
            t.join(timeout=60)
        assert errors == []
        page.close()
    shots = os.environ.get("VAD_SCREENSHOTS")
    if shots:
        shutil.copy(tmp_path / "room.png", Path(shots) / "control-room.png")
    # vad adapt learns the live event as normal: the same footage raises a lower peak
    assert main(["adapt", "--run", str(run), "--epochs", "3", "--lr", "1e-3", "--device", "cpu"]) == 0
    after = float(Detector.load(run, device="cpu").score(list(runner)).calibrated[anomaly].max())
    assert after < before, (before, after)
