"""The control room: a site's live page, its events, verdicts, health and metrics over HTTP (Starlette on uvicorn, in
a thread of ``vad serve``), behind the door of :mod:`vad.site.auth` (logins beyond loopback).

- ``GET /``: the live page (``vad/review/templates/review.html`` with ``live``: the cameras' grid, each camera's
  latest frame, its state, its score over the last minute, frames/s and drops; the event feed as cards with their
  snapshot, a click plays the event's clip; verdicts by ``n`` / ``a``); ``GET /login``, ``POST /api/login``,
  ``POST /api/logout``.
- ``GET /api/cameras/<camera>/frame.jpg``: the camera's latest scored frame (its anomaly map drawn while an event is
  open), at most 640 wide; ``/api/cameras?history=S`` adds each camera's highest score per second over ``S`` s.
- ``GET /api/feed``: the events of every camera as items (one per event: camera, times, peak, branch, snapshot
  and clip links, whether the clip is written, open or not), oldest first; ``GET /api/stream``: server-sent events,
  each item's changes as they happen (``{"kind": "event", "item": ...}``), clips and snapshots written
  (``"written"``) and verdicts given (``"verdict"``).
- ``GET /api/feedback``: the verdicts on the site's live events (``CAMERA/EVENT``), from each camera's run;
  ``POST /api/feedback`` ``{"event": "CAMERA/EVENT", "verdict": "normal"|"anomaly"}`` records one into the camera's
  run (:func:`vad.review.verdicts.record_live_verdict`; 409 while its footage is not written yet).
- ``GET /api/storage``: what retention keeps (:mod:`vad.site.retention`).
- ``GET /media/<camera>/snapshots/<event>.jpg`` and ``/media/<camera>/clips/<event>.mp4``: evidence, only from
  those folders of the site's ``out`` (no other name, no path outside them).
- ``GET /healthz``: 200 ``{"status": "ok"}`` while the loop runs and some camera is not down; 503 when every camera is
  down (or the service is stopping).
- ``GET /api/cameras``: per camera its state (``starting``, ``scoring``, ``reconnecting``, ``down``), source, model
  and backend, frames/s in and scored, frames decoded, scored and dropped, latency p50/p95 (ms, decoded -> scored),
  the open event, events started, the last gap, the latest calibrated score.
- ``GET /api/events?camera=NAME&since=ISO_TIME&limit=N``: the event and gap lines written (``out/<camera>/
  events.jsonl``), oldest first, the newest ``limit`` (default 1000) of those at or after ``since``.
- ``GET /metrics``: Prometheus' text format (prometheus_client): ``vad_camera_fps{camera}`` (scored),
  ``vad_camera_input_fps{camera}``, ``vad_frames_scored_total{camera}``, ``vad_frames_dropped_total{camera}``,
  ``vad_events_total{camera}``, ``vad_camera_up{camera}`` (1 unless down), ``vad_scoring_seconds{model}`` (a
  histogram of batch times), ``vad_batch_frames{model}``, ``vad_mqtt_dropped_total``, ``vad_mqtt_connected``,
  ``vad_login_failures_total``.

Every route but ``/healthz`` and the login answers 401 without a session or token once users exist (and they must
for any address beyond loopback); over TLS with ``http.tls``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from pathlib import Path
from urllib.parse import quote

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from vad.errors import InputError, UnknownEventError, UsageError
from vad.review.server import NO_STORE, inside, parse_json
from vad.runs import WatchFolder
from vad.site.auth import COOKIE, FAIL_DELAY, Door
from vad.site.config import HttpConfig

log = logging.getLogger(__name__)

EVENT_LINES = ("start", "update", "end", "gap")
VERIFYING = 2  # passwords checked at once (argon2id holds 64 MiB per check)
MAX_WAITING = 64  # logins waiting for a check; beyond, 429


class SiteMetrics:
    """The site's Prometheus registry: the cameras' counts read at each scrape, scoring times observed as they
    happen."""

    def __init__(self, site) -> None:
        self.site = site
        self.registry = CollectorRegistry(auto_describe=True)
        self.scoring_seconds = Histogram("vad_scoring_seconds", "Seconds to score one batch", ["model"],
                                         buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
                                         registry=self.registry)
        self.batch_frames = Histogram("vad_batch_frames", "Frames per scored batch", ["model"],
                                      buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.registry.register(_Cameras(site))

    def scoring(self, model: str, seconds: float, frames: int) -> None:
        self.scoring_seconds.labels(model=model).observe(seconds)
        self.batch_frames.labels(model=model).observe(frames)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Cameras:
    """A collector reading every camera's counts at scrape time (exact, and gone when the camera goes)."""

    def __init__(self, site) -> None:
        self.site = site

    def describe(self) -> list:
        return []

    def collect(self):
        states = self.site.camera_states()
        fps = GaugeMetricFamily("vad_camera_fps", "Frames scored per second, recent", labels=["camera"])
        fps_in = GaugeMetricFamily("vad_camera_input_fps", "Frames received per second, recent", labels=["camera"])
        up = GaugeMetricFamily("vad_camera_up", "1 while the camera is not down", labels=["camera"])
        scored = CounterMetricFamily("vad_frames_scored", "Frames scored", labels=["camera"])
        dropped = CounterMetricFamily("vad_frames_dropped", "Frames dropped (scoring behind)", labels=["camera"])
        events = CounterMetricFamily("vad_events", "Events started", labels=["camera"])
        for name, s in states.items():
            fps.add_metric([name], s["fps_scored"])
            fps_in.add_metric([name], s["fps_in"])
            up.add_metric([name], 0.0 if s["state"] in ("down", "stopped") else 1.0)
            scored.add_metric([name], s["frames_scored"])
            dropped.add_metric([name], s["dropped"])
            events.add_metric([name], s["events"])
        yield from (fps, fps_in, up, scored, dropped, events)
        pub = self.site.publisher
        if pub is not None:
            st = pub.state()
            mqtt_dropped = CounterMetricFamily("vad_mqtt_dropped", "MQTT messages dropped (buffer full)")
            mqtt_dropped.add_metric([], st["dropped"])
            connected = GaugeMetricFamily("vad_mqtt_connected", "1 while connected to the broker")
            connected.add_metric([], 1.0 if st["connected"] else 0.0)
            yield from (mqtt_dropped, connected)
        throttle = getattr(self.site.metrics, "throttle", None)
        if throttle is not None:
            failures = CounterMetricFamily("vad_login_failures", "Failed logins to the control room")
            failures.add_metric([], throttle.total)
            yield failures


class _Room:
    """The control room's routes (see the module docstring): one method per route, sharing the site, the door's
    users, sessions and login throttle, and each camera's last JPEG."""

    def __init__(self, site, door: dict) -> None:
        http = site.cfg.http
        self.site = site
        self.users, self.sessions, self.throttle = door["users"], door["sessions"], door["throttle"]
        self.secure = bool(http and http.tls)
        self.pictures: dict[str, tuple[int, bytes]] = {}
        self.verifying = asyncio.Semaphore(VERIFYING)
        self.waiting = 0  # logins waiting for their check (beyond MAX_WAITING: 429)

    async def healthz(self, request: Request) -> Response:
        ok = self.site.healthy()
        return JSONResponse({"status": "ok" if ok else "down"}, 200 if ok else 503)

    async def page(self, request: Request) -> Response:
        from vad.review.page import render_page

        title = self.site.cfg.path.stem if self.site.cfg.path else "site"
        data = {"preroll": 0, "user": request.scope.get("user"), "static_note": "", "no_video_note": ""}
        html = await run_in_threadpool(render_page, data, True, title=title, clips=sorted(self.site.cameras))
        return HTMLResponse(html, headers=NO_STORE)

    async def login_page(self, request: Request) -> Response:
        from vad.review.page import render_login

        return HTMLResponse(render_login(), headers=NO_STORE)

    async def login(self, request: Request) -> Response:
        address = request.client.host if request.client else "?"
        if self.throttle.blocked(address):
            return self._too_many(address)
        try:
            asked = parse_json(await _body(request))
            user, password = asked["user"], asked["password"]
            if not (isinstance(user, str) and isinstance(password, str)):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            return _json(400, {"error": 'expected {"user": NAME, "password": PASSWORD}'})
        if self.waiting >= MAX_WAITING:  # not a try: nothing is counted against the address
            return _json(429, {"error": "too many logins under way; try again in a few seconds"},
                         {"Retry-After": "5"})
        if self.throttle.begin(address):  # its attempts in flight count: 20 at once are not 20 tries
            return self._too_many(address)
        ok = False
        self.waiting += 1
        try:
            async with self.verifying:  # each check holds argon2's 64 MiB: a few at a time
                ok = await run_in_threadpool(self.users.check_password, user, password)
        finally:
            self.waiting -= 1
            self.throttle.end(address, ok)
        if not ok:
            log.warning(f"note: failed login for {user!r} from {address} ({self.throttle.total} failed so far)")
            await asyncio.sleep(FAIL_DELAY)
            return _json(401, {"error": "wrong user or password"})
        token = self.sessions.open(user)
        response = _json(200, {"user": user})
        response.set_cookie(COOKIE, token, max_age=int(self.sessions.seconds), httponly=True, samesite="strict",
                            secure=self.secure, path="/")
        log.info(f"login: {user} from {address}")
        return response

    def _too_many(self, address: str) -> Response:
        wait = self.throttle.blocked(address) or FAIL_DELAY
        return _json(429, {"error": f"too many failed logins from {address}; try again in {wait:.0f} s"},
                     {"Retry-After": str(int(wait) + 1)})

    async def logout(self, request: Request) -> Response:
        self.sessions.close(request.cookies.get(COOKIE))
        response = _json(200, {"user": None})
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=self.secure)
        return response

    async def cameras(self, request: Request) -> Response:
        states = await run_in_threadpool(self.site.camera_states)
        if "history" in request.query_params:
            try:
                seconds = min(3600, max(1, int(request.query_params["history"])))
            except ValueError:
                return _json(400, {"error": "history: expected a number of seconds"})
            for name, s in states.items():
                s["history"] = self.site.camera_history(name, seconds)
        return JSONResponse(states, headers=NO_STORE)

    async def frame(self, request: Request) -> Response:
        name = request.path_params["camera"]
        cam = self.site.camera(name)
        if cam is None:
            return _json(404, {"error": f"unknown camera {name!r}"})
        latest = cam.latest
        if latest is None:
            return _json(404, {"error": f"camera {name}: no frame scored yet"})
        cached = self.pictures.get(name)
        if cached is None or cached[0] != latest.frame.seq:
            got = await run_in_threadpool(cam.picture)
            if got is None:
                return _json(404, {"error": f"camera {name}: no frame scored yet"})
            cached = self.pictures[name] = got
        return Response(cached[1], media_type="image/jpeg", headers=NO_STORE)

    async def events(self, request: Request) -> Response:
        camera = request.query_params.get("camera")
        since = request.query_params.get("since")
        try:
            limit = int(request.query_params.get("limit", "1000"))
            if limit < 1:
                raise ValueError
        except ValueError:
            return _json(400, {"error": "limit: expected a positive integer"})
        names = list(self.site.cameras) if camera is None else [camera]
        if camera is not None and camera not in self.site.cameras:
            return _json(404, {"error": f"unknown camera {camera!r}; cameras: {sorted(self.site.cameras)}"})
        lines = await run_in_threadpool(_read_events, self.site.cfg.out, names, since)
        return JSONResponse({"events": lines[-limit:]}, headers=NO_STORE)

    async def feed(self, request: Request) -> Response:
        camera = request.query_params.get("camera")
        names = list(self.site.cameras) if camera is None else [camera]
        lines = await run_in_threadpool(_read_events, self.site.cfg.out, names, None)
        items: dict[str, dict] = {}
        for line in lines:
            patch = self.site.feed.patch(line["camera"], line)
            if patch is not None:
                items.setdefault(patch["id"], {}).update(patch)
        feed = self.site.feed
        for item in items.values():
            item["clip_ready"] = bool(item.get("clip")) and feed.clip_path(item["camera"], item["event"]).is_file()
        out = sorted(items.values(), key=lambda x: x.get("start_time") or x.get("end_time") or "")
        return JSONResponse({"events": out[-2000:]}, headers=NO_STORE)

    async def stream(self, request: Request) -> Response:
        queue = self.site.feed.subscribe(asyncio.get_running_loop())

        async def messages():
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        msg = await asyncio.wait_for(queue.get(), 15)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if msg is None:  # the service is stopping
                        return
                    yield f"data: {json.dumps(msg)}\n\n"
            finally:
                self.site.feed.unsubscribe(queue)

        return StreamingResponse(messages(), media_type="text/event-stream",
                                 headers={**NO_STORE, "X-Accel-Buffering": "no"})

    async def feedback(self, request: Request) -> Response:
        if request.method == "GET":
            verdicts, bad = await run_in_threadpool(self.site.verdicts)
            return _json(200, {"verdicts": verdicts, "unreadable_lines": bad})
        if not request.headers.get("content-type", "").startswith("application/json"):
            return _json(415, {"error": "expected a JSON body (Content-Type: application/json)"})
        try:
            asked = parse_json(await _body(request))
            key, verdict = asked["event"], asked["verdict"]
            if not (isinstance(key, str) and isinstance(verdict, str)) or "/" not in key:
                raise TypeError("event must be CAMERA/EVENT and verdict a string")
        except (ValueError, TypeError, KeyError) as err:
            return _json(400, {"error": f'expected {{"event": "CAMERA/EVENT", "verdict": "normal"|"anomaly"}} ({err})'})
        user = request.scope.get("user")
        try:
            line = await run_in_threadpool(self.site.record_verdict, key, verdict, f"site:{user}" if user else "site")
        except UnknownEventError as err:
            return _json(404, {"error": str(err)})
        except UsageError as err:
            return _json(400, {"error": str(err)})
        except InputError as err:  # its footage is not written yet
            return _json(409, {"error": str(err)})
        except OSError as err:
            return _json(500, {"error": f"{err.filename}: {err.strerror or err}"})
        return _json(200, line)

    async def storage(self, request: Request) -> Response:
        kept = self.site.kept
        if kept is None:
            return _json(503, {"error": "not measured yet"})
        return JSONResponse(kept.as_dict(), headers=NO_STORE)

    async def media(self, request: Request) -> Response:
        camera, kind, name = (request.path_params[k] for k in ("camera", "kind", "name"))
        if camera not in self.site.cameras or kind not in MEDIA:
            return _json(404, {"error": f"not found: {request.url.path}"})
        path = inside(self.site.cfg.out / camera / kind, name)
        if path is None or path.suffix != MEDIA[kind] or not path.is_file():
            return _json(404, {"error": f"not found: {request.url.path}"})
        if kind == "snapshots":  # replaced while an event's peak rises: read at once, not stat-then-stream
            data = await run_in_threadpool(path.read_bytes)
            return Response(data, media_type="image/jpeg", headers=NO_STORE)
        return FileResponse(path, headers=NO_STORE)  # a clip, complete once there (byte ranges: seeking)

    async def metrics(self, request: Request) -> Response:
        return Response(await run_in_threadpool(self.site.metrics.text), media_type=CONTENT_TYPE_LATEST)

    async def http_error(self, request: Request, exc: HTTPException) -> Response:
        return _json(exc.status_code, {"error": f"{exc.detail}: {request.method} {request.url.path}"})


def site_app(site, door: dict) -> Starlette:
    """The site's ASGI app (see the module docstring) behind its door (:class:`~vad.site.auth.Door`: ``door`` holds
    its users file, sessions, login throttle and whether it is an open loopback server)."""
    http = site.cfg.http
    room = _Room(site, door)
    site.metrics.throttle = door["throttle"]
    routes = [Route("/", room.page), Route("/login", room.login_page),
              Route("/api/login", room.login, methods=["POST"]), Route("/api/logout", room.logout, methods=["POST"]),
              Route("/healthz", room.healthz), Route("/api/cameras", room.cameras),
              Route("/api/cameras/{camera}/frame.jpg", room.frame), Route("/api/events", room.events),
              Route("/api/feed", room.feed), Route("/api/stream", room.stream),
              Route("/api/feedback", room.feedback, methods=["GET", "POST"]), Route("/api/storage", room.storage),
              Route("/media/{camera}/{kind}/{name:path}", room.media), Route("/metrics", room.metrics)]
    middleware = [Middleware(Door, users=door["users"], sessions=door["sessions"], loopback_open=door["open"],
                             origins=tuple(http.origins) if http else ())]
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: room.http_error})


MEDIA = {"snapshots": ".jpg", "clips": ".mp4"}
MAX_BODY = 1 << 14


async def _body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ValueError(f"a body over {MAX_BODY} bytes")
    return body


def _json(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status, headers={**NO_STORE, **(headers or {})})


def _read_events(out: Path, cameras: list[str], since: str | None) -> list[dict]:
    """Event and gap lines of ``cameras`` (``out/<camera>/events.jsonl``) written at or after ``since`` (ISO time,
    compared as text: the lines' ``wall_time`` is UTC with a ``Z``), oldest first; a torn last line is skipped."""
    lines = []
    for name in cameras:
        path = WatchFolder(Path(out) / name).events
        if not path.is_file():
            continue
        for text in path.read_text().splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                continue
            if line.get("type") in EVENT_LINES and (since is None or line.get("wall_time", "") >= since):
                lines.append({**line, "camera": name})
    return sorted(lines, key=lambda x: x.get("wall_time", ""))


class LiveFeed:
    """The site's events as they happen, for the control room's event stream (``/api/stream``): every event line
    of every camera, each clip and snapshot once written, each verdict, pushed to the pages listening (one asyncio
    queue each, filled from the cameras' threads)."""

    BOUND = 1000  # messages waiting for one page; beyond, its oldest are dropped (it reloads the feed on reconnect)

    def __init__(self, site) -> None:
        self.site = site
        self._subs: dict[asyncio.Queue, asyncio.AbstractEventLoop] = {}
        self._lock = threading.Lock()

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=self.BOUND)
        with self._lock:
            self._subs[q] = loop
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        with self._lock:
            self._subs.pop(q, None)

    def publish(self, msg: dict | None) -> None:
        """Send ``msg`` to every page listening (from any thread); None ends their streams."""
        with self._lock:
            subs = list(self._subs.items())
        for q, loop in subs:
            try:
                loop.call_soon_threadsafe(_put, q, msg)
            except RuntimeError:  # its loop is closed
                self.unsubscribe(q)

    # what the cameras call
    def line(self, camera: str, line: dict) -> None:
        patch = self.patch(camera, line)
        if patch is not None:
            self.publish({"kind": "event", "item": patch})

    def written(self, camera: str, kind: str, event: str, path: str) -> None:
        self.publish({"kind": "written", "id": f"{camera}/{event}", "what": kind})

    def verdict(self, key: str, line: dict) -> None:
        self.publish({"kind": "verdict", "id": key, "line": line})

    # an event line as a change of the event's item (the page merges them; /api/feed folds them)
    def patch(self, camera: str, line: dict) -> dict | None:
        kind, event = line.get("type"), line.get("event")
        if kind not in ("start", "update", "end") or not isinstance(event, str):
            return None
        patch = {"id": f"{camera}/{event}", "camera": camera, "event": event, "peak": line.get("peak"),
                 "branch": line.get("branch")}
        if line.get("snapshot"):
            patch["snapshot"] = f"/media/{quote(camera)}/snapshots/{quote(event)}.jpg"
        if kind == "start":
            patch.update(start_time=line.get("wall_time"), open=True, clip_ready=False)
            entry = self.site.cameras.get(camera)
            if entry is not None and entry[0].clips:
                patch["clip"] = self._clip_url(camera, event)
        elif kind == "end":
            patch.update(end_time=line.get("wall_time"), open=False)
            patch["clip"] = self._clip_url(camera, event) if line.get("clip") else None
            if line.get("reason"):
                patch["reason"] = line["reason"]
        return patch

    def clip_path(self, camera: str, event: str) -> Path:
        return WatchFolder(self.site.cfg.out / camera).clip(event)

    @staticmethod
    def _clip_url(camera: str, event: str) -> str:
        return f"/media/{quote(camera)}/clips/{quote(event)}.mp4"


def _put(q: asyncio.Queue, msg: dict | None) -> None:
    if q.full():
        q.get_nowait()
    q.put_nowait(msg)


class SiteServer:
    """``site_app`` served by uvicorn in a thread on ``cfg.host:cfg.port`` (HTTPS with ``cfg.tls``); refuses (a
    :class:`~vad.errors.ConfigError`) an address beyond loopback without users (:func:`vad.site.auth.check_binding`)."""

    def __init__(self, site, cfg: HttpConfig) -> None:
        from vad.site.auth import Sessions, Throttle, UsersFile, check_binding, is_loopback

        users = UsersFile(Path(cfg.auth_file))
        check_binding(cfg.host, users)
        self.users = users
        door = {"users": users, "sessions": Sessions(cfg.session_hours), "throttle": Throttle(),
                "open": is_loopback(cfg.host)}
        self.socket = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((cfg.host, cfg.port))
            self.socket.listen(128)
        except OSError as err:
            self.socket.close()
            raise UsageError(f"http: cannot listen on {cfg.host}:{cfg.port} ({err.strerror or err}); choose another "
                             "http.port (0: any free port)") from None
        host, port = self.socket.getsockname()[:2]
        self.port = port
        scheme = "https" if cfg.tls else "http"
        self.url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}/"
        tls = {"ssl_certfile": cfg.tls.cert, "ssl_keyfile": cfg.tls.key} if cfg.tls else {}
        config = uvicorn.Config(site_app(site, door), log_level="warning", log_config=None, access_log=False,
                                lifespan="off", server_header=False, timeout_graceful_shutdown=2,
                                proxy_headers=bool(cfg.trusted_proxies),
                                forwarded_allow_ips=list(cfg.trusted_proxies) or None, **tls)
        self._server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]},
                                       name="vad-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self.thread.join(timeout=5)
        self.socket.close()
