"""The review page of a scored run (vad.review): written by evaluate, served by `vad review` over loopback, verdicts
from the page and from `vad feedback`; and the page in a real browser (headless Debian Chromium driven by
Playwright; skipped when either is missing)."""

from __future__ import annotations

import csv
import http.client
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vad.cli import main
from vad.review import ReviewServer
from vad.runs import RunFolder

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
CARD = re.compile(r'<article class="card" data-event="([^"]+)"')


@pytest.fixture(scope="module")
def review_run(tmp_path_factory) -> Path:
    """A tiny scored, evaluated and rendered run: the anomaly scene's two labelled frame folders (8 fps given) and an
    unlabelled 10 fps MPEG-4 video with the anomaly 4 s in (so a pre-roll is not clipped at 0). MPEG-4 as the
    training videos: in H.264 the tiny model's normal frames all scored above its threshold, one event over the
    whole clip (as trained by 79b2f7e)."""
    from tests import helpers

    base = tmp_path_factory.mktemp("review")
    data = helpers.make_anomaly_scene(base / "data", n_train=4)
    video = helpers.write_video(base / "cam.mp4", helpers.paste_anomaly(helpers.frames(60, 60), 40, 52), fps=10,
                                codec="mpeg4")
    run = base / "run"
    tiny = ["model.input_height=96", "train.epochs=4", "train.batch_size=8", "train.lr=3e-3"]
    assert main(["train", "--data", str(data), "--dataset", "shanghaitech", "--out", str(run), "--set", *tiny]) == 0
    assert main(["score", "--run", str(run), "--data", str(data), "--dataset", "shanghaitech",
                 "--set", "score.save_maps=true"]) == 0
    assert main(["score", "--run", str(run), "--input", str(video), "--set", "score.save_maps=true"]) == 0
    assert main(["evaluate", "--run", str(run), "--set", "eval.fps=8"]) == 0
    assert main(["render", "--run", str(run), "--set", "eval.fps=8"]) == 0
    return run


def _events(run: Path) -> list[dict]:
    with RunFolder(run).events_csv.open() as fh:
        return list(csv.DictReader(fh))


def _lines(run: Path) -> list[dict]:
    path = RunFolder(run).feedback
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def test_evaluate_writes_a_self_contained_page(review_run: Path) -> None:
    folder = RunFolder(review_run)
    page = folder.review_page.read_text()
    rows = _events(review_run)
    assert rows and CARD.findall(page) == [r["id"] for r in rows]  # one card per event, in events.csv's order
    assert page.count("data-event=") == len(rows)
    assert not re.search(r"https?://", page)  # no CDN, no network
    assert "<script src" not in page and "<link rel=\"stylesheet\"" not in page
    for r in rows:
        assert folder.thumbnail(r["id"]).stat().st_size > 1000
        assert f'src="review/{r["id"]}.jpg"' in page  # relative to the run folder
    data = json.loads(re.search(r'id="review-data">(.*?)</script>', page, re.S)[1])
    assert data["clips"]["cam"]["video"] == "videos/cam.mp4" and data["clips"]["cam"]["source"] == "../cam.mp4"
    assert data["clips"]["01_0001"]["source"] is None  # a frame folder: the rendered video or nothing
    for key in ("frame AUC micro", "frame AUC macro", "anomalous frames caught", "threshold from", "events per hour"):
        assert f"<dt>{key}</dt>" in page
    assert page.count('<div class="tl"') == 3 and page.count('class="gt"') == 2  # cam is unlabelled


def test_a_gone_source_leaves_a_card_without_thumbnail(review_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(review_run, run)
    manifest = json.loads(RunFolder(run).manifest.read_text())
    manifest["cam"]["path"] = str(tmp_path / "deleted.mp4")  # scored from a file that is gone now
    RunFolder(run).manifest.write_text(json.dumps(manifest))
    assert main(["evaluate", "--run", str(run), "--set", "eval.fps=8"]) == 0
    page = RunFolder(run).review_page.read_text()
    cam = [r["id"] for r in _events(run) if r["clip"] == "cam"]
    assert cam and page.count("no thumbnail: the source is gone") == len(cam)
    assert not any(RunFolder(run).thumbnail(e).exists() for e in cam)
    assert len(CARD.findall(page)) == len(_events(run))


def test_feedback_command_appends_a_verdict_and_refuses_a_bad_one(review_run: Path, capsys) -> None:
    first = _events(review_run)[0]
    before = len(_lines(review_run))
    assert main(["feedback", "--run", str(review_run), "--event", first["id"], "--verdict", "normal"]) == 0
    lines = _lines(review_run)
    assert len(lines) == before + 1
    line = lines[-1]
    assert (line["event"], line["clip"], line["start"], line["end"]) == (first["id"], first["clip"],
                                                                         int(first["start"]), int(first["end"]))
    assert line["verdict"] == "normal" and line["via"] == "cli" and re.fullmatch(r"\d{4}-.*T.*Z", line["time"])
    capsys.readouterr()
    assert main(["feedback", "--run", str(review_run), "--event", "nope-f3", "--verdict", "anomaly"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown event 'nope-f3'") and first["id"] in err[0]
    assert len(_lines(review_run)) == before + 1
    with pytest.raises(SystemExit) as exit_:
        main(["feedback", "--run", str(review_run), "--event", first["id"], "--verdict", "maybe"])
    assert exit_.value.code == 2


@pytest.fixture
def server(review_run: Path) -> Iterator[ReviewServer]:
    srv = ReviewServer(review_run, 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _ask(srv: ReviewServer, method: str, path: str, body: dict | list | None = None,
         headers: dict | None = None) -> tuple[int, bytes, http.client.HTTPMessage]:
    """``(status, body, headers)`` of one request (the headers' names case-insensitive, as HTTP's are)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers or {})
        r = conn.getresponse()
        return r.status, r.read(), r.headers
    finally:
        conn.close()


def test_server_serves_loopback_and_takes_same_origin_verdicts(server: ReviewServer, review_run: Path) -> None:
    assert server.server_address[0] == "127.0.0.1"
    status, page, _ = _ask(server, "GET", "/")
    assert status == 200 and b"data-event=" in page
    status, video, headers = _ask(server, "GET", "/videos/cam.mp4", headers={"Range": "bytes=0-99"})
    assert status == 206 and len(video) == 100 and headers["Content-Range"].startswith("bytes 0-99/")
    assert _ask(server, "GET", "/source/cam")[0] == 200
    for hidden in ("/.lock", "/../cam.mp4", "/source/01_0001", "/nothing.html", "/%2e%2e/cam.mp4", "/%2E%2E/cam.mp4",
                   "/videos/../../cam.mp4", "/videos/%2e%2e/%2e%2e/cam.mp4", "/videos/..%2f..%2fcam.mp4",
                   "/videos/%2e%2e%2f%2e%2e%2fcam.mp4", "/review/%2e/%2e%2e/%2e%2e/cam.mp4"):
        assert _ask(server, "GET", hidden)[0] == 404, hidden
    event = _events(review_run)[-1]["id"]
    ok = {"Origin": server.url.rstrip("/"), "Content-Type": "application/json"}
    before = len(_lines(review_run))
    status, body, _ = _ask(server, "POST", "/api/feedback", {"event": event, "verdict": "anomaly"}, ok)
    assert status == 200 and json.loads(body)["via"] == "review"
    assert _lines(review_run)[-1]["event"] == event and len(_lines(review_run)) == before + 1
    status, body, _ = _ask(server, "GET", "/api/feedback")
    assert status == 200 and json.loads(body)["verdicts"][event]["verdict"] == "anomaly"
    for headers in ({**ok, "Origin": "http://evil.example"}, {"Content-Type": "application/json"},
                    {**ok, "Host": f"evil.example:{server.port}"}):
        status, _, _ = _ask(server, "POST", "/api/feedback", {"event": event, "verdict": "normal"}, headers)
        assert status == 403, headers
    assert _ask(server, "GET", "/", headers={"Host": f"rebound.example:{server.port}"})[0] == 403
    assert _ask(server, "POST", "/api/feedback", {"event": "nope", "verdict": "normal"}, ok)[0] == 404
    assert _ask(server, "POST", "/api/feedback", {"event": event, "verdict": "maybe"}, ok)[0] == 400
    assert len(_lines(review_run)) == before + 1


def test_server_says_why_a_verdict_was_not_taken(review_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(review_run, run)
    srv = ReviewServer(run, 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        event = _events(run)[0]["id"]
        ok = {"Origin": srv.url.rstrip("/"), "Content-Type": "application/json"}
        status, _, headers = _ask(srv, "HEAD", "/videos/cam.mp4")
        assert status == 200 and int(headers["content-length"]) == (run / "videos" / "cam.mp4").stat().st_size
        status, body, _ = _ask(srv, "POST", "/api/feedback", {"event": event, "verdict": "normal"},
                               {**ok, "Content-Type": "text/plain"})
        assert status == 415 and "application/json" in json.loads(body)["error"]
        for bad in ([event, "normal"], {"event": event}, {"event": 3, "verdict": "normal"}):
            status, body, _ = _ask(srv, "POST", "/api/feedback", bad, ok)
            assert status == 400 and "expected" in json.loads(body)["error"], bad
        assert _ask(srv, "POST", "/api/feedback", {"event": "x" * 20000, "verdict": "normal"}, ok)[0] == 413
        assert _ask(srv, "PUT", "/api/feedback", {"event": event, "verdict": "normal"}, ok)[0] == 405
        RunFolder(run).feedback.unlink(missing_ok=True)
        RunFolder(run).feedback.mkdir()  # the verdict cannot be written
        status, body, _ = _ask(srv, "POST", "/api/feedback", {"event": event, "verdict": "normal"}, ok)
        assert status == 500 and "feedback.jsonl" in json.loads(body)["error"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_page_is_its_template_with_style_and_script_inlined(review_run: Path) -> None:
    from importlib.resources import files

    page = RunFolder(review_run).review_page.read_text()
    package = files("vad.review")
    assert (package / "templates" / "review.html").is_file()
    for name, tag in (("review.css", "<style>"), ("review.js", "<script>")):
        text = (package / "static" / name).read_text()
        assert f"{tag}\n{text}</" in page, name
    assert "{{" not in page and "{%" not in page
    assert page.count('<script type="application/json" id="review-data">') == 1


# In a real browser ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                     "playwright)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


# play() resolves without playing: the video stays where the page put it (and says when it was asked to play)
STILL = ("HTMLMediaElement.prototype.play = function () { window.playedAt = this.currentTime; "
         "return Promise.resolve(); };")


def _open(browser, url: str):
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.add_init_script(STILL)
    page.goto(url)
    page.wait_for_load_state("load")
    return page, errors


def test_page_loads_from_a_file_without_errors(browser, review_run: Path) -> None:
    page, errors = _open(browser, RunFolder(review_run).review_page.resolve().as_uri())
    try:
        assert page.locator(".card[data-event]").count() == len(_events(review_run))
        assert "Read-only" in page.locator("#mode").inner_text()
        assert page.locator(".card button").first.is_disabled()
        page.select_option("#sort", "score")
        peaks = page.eval_on_selector_all(".card", "cs => cs.map(c => parseFloat(c.dataset.peak))")
        assert peaks == sorted(peaks, reverse=True)
        page.select_option("#fclip", "cam")
        shown = page.eval_on_selector_all(".card", "cs => cs.filter(c => c.style.display !== 'none').length")
        assert shown == sum(r["clip"] == "cam" for r in _events(review_run))
        assert errors == []
    finally:
        page.close()


@pytest.mark.parametrize("which", ["first", "latest"])
def test_clicking_a_card_plays_from_its_pre_roll(browser, review_run: Path, which: str) -> None:
    rows = _events(review_run)
    row = rows[0] if which == "first" else max(rows, key=lambda r: float(r["start_s"]))
    page, errors = _open(browser, RunFolder(review_run).review_page.resolve().as_uri())
    try:
        page.locator(f'.card[data-event="{row["id"]}"]').click()
        page.wait_for_function("() => window.playedAt !== undefined", timeout=15000)
        t = page.evaluate("() => document.querySelector('video').currentTime")
        start = float(row["start_s"])
        assert start - 2.5 <= t <= start, (t, row)
        if which == "latest":  # the clip's timeline cursor follows the video
            assert start > 2.5 and t > 0
            page.wait_for_function("() => document.querySelector('.tl.cur .cursor').getAttribute('x1') !== '0'")
            x = float(page.get_attribute(".tl.cur .cursor", "x1"))
            frames = int(json.loads(RunFolder(review_run).manifest.read_text())[row["clip"]]["frames"])
            assert x == pytest.approx(1000 * (int(row["start"]) - 20) / frames, abs=15)  # 2 s at 10 fps
        assert errors == []
    finally:
        page.close()


def test_marking_an_event_in_the_served_page_records_it(browser, server: ReviewServer, review_run: Path) -> None:
    page, errors = _open(browser, server.url)
    try:
        card = page.locator(".card[data-event]").first
        event = card.get_attribute("data-event")
        before = len(_lines(review_run))
        card.locator("h3").click()
        page.keyboard.press("n")
        page.wait_for_function(f"() => document.querySelector('.card[data-event=\"{event}\"] .v.normal')",
                               timeout=10000)
        # an earlier test may have left this event marked normal, so the card can show it before the POST lands
        deadline = time.monotonic() + 10
        while len(_lines(review_run)) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        line = _lines(review_run)[-1]
        assert len(_lines(review_run)) == before + 1
        assert (line["event"], line["verdict"], line["via"]) == (event, "normal", "review")
        card.locator("button[data-verdict=anomaly]").click()
        page.wait_for_function(f"() => document.querySelector('.card[data-event=\"{event}\"] .v.anomaly')")
        assert _lines(review_run)[-1]["verdict"] == "anomaly"
        again, _ = _open(browser, server.url)  # a new visit shows the verdicts already given
        again.wait_for_function(f"() => document.querySelector('.card[data-event=\"{event}\"] .v.anomaly')")
        again.close()
        assert errors == []
    finally:
        page.close()
