"""The control room over HTTP (Starlette on uvicorn, in a thread of ``vad serve``), one router per resource:
:class:`SessionRoutes` (the live page, login, logout), :class:`CameraRoutes` (``/healthz``: 200 while the loop runs
and some camera is not down, else 503; ``/api/cameras``, ``?history=S`` adding each camera's highest score per second
over ``S`` s; each camera's latest frame; ``/api/storage``; ``/metrics``), :class:`EventRoutes` (``/api/events``:
event and gap lines, oldest first, the newest ``limit``, default 1000; ``/api/feed``: one item per event;
``/api/feedback``: verdicts on ``CAMERA/EVENT``, 409 while its footage is not written yet; ``/media/<camera>/``
snapshots and clips, nothing else under ``out``), :class:`StreamRoutes` (``/api/stream``, server-sent events).

Behind the door of :mod:`vad.site.auth`: every route but ``/healthz`` and the login answers 401 without a session or
token once users exist (and they must for any address beyond loopback); over TLS with ``http.tls``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from vad.errors import InputError, UnknownEventError, UsageError
from vad.review.page import render_login, render_page
from vad.review.server import VerdictRequest
from vad.site.auth import COOKIE, FAIL_DELAY, Door, Gate, Sessions, Throttle, UsersFile, check_binding, is_loopback
from vad.site.config import HttpConfig
from vad.site.core import EventLine, SiteEvent, SiteView, Stopping, Verdict, Written, feed_item
from vad.web import NO_STORE, AppServer, BodyTooLarge, as_model, http_error, inside, json_response, listen, read_body

__all__ = ["Gate", "SiteServer", "site_app"]

log = logging.getLogger(__name__)

VERIFYING = 2  # passwords checked at once (argon2id holds 64 MiB per check)
MAX_WAITING = 64  # logins waiting for a check; beyond, 429
MEDIA = {"snapshots": ".jpg", "clips": ".mp4"}


def site_app(view: SiteView, gate: Gate) -> Starlette:
    """The site's ASGI app answering from ``view`` behind the door of ``gate``."""
    routes = [*SessionRoutes(view, gate).routes(), *CameraRoutes(view, gate.throttle).routes(),
              *EventRoutes(view).routes(), *StreamRoutes(view).routes()]
    middleware = [Middleware(Door, users=gate.users, sessions=gate.sessions, loopback_open=gate.open,
                             origins=gate.origins)]
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error})


class SiteServer:
    """``site_app`` served by uvicorn in a thread on ``cfg.host:cfg.port`` (HTTPS with ``cfg.tls``); refuses (a
    :class:`~vad.errors.ConfigError`) an address beyond loopback without users (:func:`vad.site.auth.check_binding`)."""

    def __init__(self, view: SiteView, cfg: HttpConfig) -> None:
        self.users = UsersFile(Path(cfg.auth_file))
        check_binding(cfg.host, self.users)
        gate = Gate(self.users, Sessions(cfg.session_hours), Throttle(), is_loopback(cfg.host), bool(cfg.tls),
                    tuple(cfg.origins))
        try:
            sock = listen(cfg.host, cfg.port)
        except OSError as err:
            raise UsageError(f"http: cannot listen on {cfg.host}:{cfg.port} ({err.strerror or err}); choose another "
                             "http.port (0: any free port)") from None
        host, self.port = sock.getsockname()[:2]
        self.url = f"{'https' if cfg.tls else 'http'}://{host if ':' not in host else f'[{host}]'}:{self.port}/"
        tls = {"ssl_certfile": cfg.tls.cert, "ssl_keyfile": cfg.tls.key} if cfg.tls else {}
        self._server = AppServer(site_app(view, gate), sock, "vad-http", graceful=2,
                                 proxy_headers=bool(cfg.trusted_proxies),
                                 forwarded_allow_ips=list(cfg.trusted_proxies) or None, **tls)
        self.thread = self._server.thread

    def start(self) -> None:
        self.thread.start()
        users, tokens = self.users.names()
        who = (f"{len(users)} user(s), {len(tokens)} token(s) in {self.users.path}" if users or tokens
               else "open: no login (loopback only)")
        log.info(f"http: {self.url} (the control room; /healthz, /api/..., /metrics); {who}")

    def stop(self) -> None:
        self._server.stop(timeout=5)
        self._server.close()


@dataclass(frozen=True)
class Login:
    """``POST /api/login``'s body."""

    user: str
    password: str


class SessionRoutes:
    def __init__(self, view: SiteView, gate: Gate) -> None:
        self.view, self.gate = view, gate
        self.verifying = asyncio.Semaphore(VERIFYING)
        self.waiting = 0  # logins waiting for their check (beyond MAX_WAITING: 429)

    def routes(self) -> list[Route]:
        return [Route("/", self.page), Route("/login", self.login_page),
                Route("/api/login", self.login, methods=["POST"]), Route("/api/logout", self.logout, methods=["POST"])]

    async def page(self, request: Request) -> Response:
        data = {"preroll": 0, "user": request.scope.get("user"), "static_note": "", "no_video_note": ""}
        html = await run_in_threadpool(render_page, data, True, title=self.view.title,
                                       clips=sorted(self.view.camera_names()))
        return HTMLResponse(html, headers=NO_STORE)

    async def login_page(self, request: Request) -> Response:
        return HTMLResponse(render_login(), headers=NO_STORE)

    async def login(self, request: Request) -> Response:
        address = request.client.host if request.client else "?"
        throttle = self.gate.throttle
        if throttle.blocked(address):
            return self._too_many(address)
        try:
            asked = as_model(Login, await read_body(request))
        except BodyTooLarge as err:
            return json_response(413, {"error": str(err)})
        except (ValueError, TypeError, KeyError):
            return json_response(400, {"error": 'expected {"user": NAME, "password": PASSWORD}'})
        if self.waiting >= MAX_WAITING:  # not a try: nothing is counted against the address
            return json_response(429, {"error": "too many logins under way; try again in a few seconds"},
                                 {"Retry-After": "5"})
        if throttle.begin(address):  # its attempts in flight count: 20 at once are not 20 tries
            return self._too_many(address)
        ok = False
        self.waiting += 1
        try:
            async with self.verifying:  # each check holds argon2's 64 MiB: a few at a time
                ok = await run_in_threadpool(self.gate.users.check_password, asked.user, asked.password)
        finally:
            self.waiting -= 1
            throttle.end(address, ok)
        if not ok:
            log.warning(f"note: failed login for {asked.user!r} from {address} ({throttle.total} failed so far)")
            await asyncio.sleep(FAIL_DELAY)
            return json_response(401, {"error": "wrong user or password"})
        token = self.gate.sessions.open(asked.user)
        response = json_response(200, {"user": asked.user})
        response.set_cookie(COOKIE, token, max_age=int(self.gate.sessions.seconds), httponly=True, samesite="strict",
                            secure=self.gate.secure, path="/")
        log.info(f"login: {asked.user} from {address}")
        return response

    def _too_many(self, address: str) -> Response:
        wait = self.gate.throttle.blocked(address) or FAIL_DELAY
        return json_response(429, {"error": f"too many failed logins from {address}; try again in {wait:.0f} s"},
                             {"Retry-After": str(int(wait) + 1)})

    async def logout(self, request: Request) -> Response:
        self.gate.sessions.close(request.cookies.get(COOKIE))
        response = json_response(200, {"user": None})
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=self.gate.secure)
        return response


class CameraRoutes:
    """Each camera's last JPEG is kept until a newer frame is scored (pages ask every second or so)."""

    def __init__(self, view: SiteView, throttle: Throttle) -> None:
        self.view = view
        self.pictures: dict[str, tuple[int, bytes]] = {}
        self.door = CollectorRegistry(auto_describe=True)  # the door's counts, after the site's in /metrics
        self.door.register(_LoginFailures(throttle))

    def routes(self) -> list[Route]:
        return [Route("/healthz", self.healthz), Route("/api/cameras", self.cameras),
                Route("/api/cameras/{camera}/frame.jpg", self.frame), Route("/api/storage", self.storage),
                Route("/metrics", self.metrics)]

    async def healthz(self, request: Request) -> Response:
        ok = self.view.healthy()
        return JSONResponse({"status": "ok" if ok else "down"}, 200 if ok else 503)

    async def cameras(self, request: Request) -> Response:
        states = await run_in_threadpool(self.view.camera_states)
        if "history" in request.query_params:
            try:
                seconds = min(3600, max(1, int(request.query_params["history"])))
            except ValueError:
                return json_response(400, {"error": "history: expected a number of seconds"})
            for name, s in states.items():
                s["history"] = self.view.camera_history(name, seconds)
        return JSONResponse(states, headers=NO_STORE)

    async def frame(self, request: Request) -> Response:
        name = request.path_params["camera"]
        if name not in self.view.camera_names():
            return json_response(404, {"error": f"unknown camera {name!r}"})
        seq = self.view.latest_seq(name)
        if seq is None:
            return json_response(404, {"error": f"camera {name}: no frame scored yet"})
        cached = self.pictures.get(name)
        if cached is None or cached[0] != seq:
            got = await run_in_threadpool(self.view.picture, name)
            if got is None:
                return json_response(404, {"error": f"camera {name}: no frame scored yet"})
            cached = self.pictures[name] = got
        return Response(cached[1], media_type="image/jpeg", headers=NO_STORE)

    async def storage(self, request: Request) -> Response:
        kept = self.view.storage()
        if kept is None:
            return json_response(503, {"error": "not measured yet"})
        return JSONResponse(kept, headers=NO_STORE)

    async def metrics(self, request: Request) -> Response:
        text = await run_in_threadpool(self.view.metrics_text)
        return Response(text + generate_latest(self.door), media_type=CONTENT_TYPE_LATEST)


class _LoginFailures:
    """``vad_login_failures_total``, read from the door's throttle at scrape time."""

    def __init__(self, throttle: Throttle) -> None:
        self.throttle = throttle

    def describe(self) -> list:
        return []

    def collect(self):
        failures = CounterMetricFamily("vad_login_failures", "Failed logins to the control room")
        failures.add_metric([], self.throttle.total)
        yield failures


@dataclass(frozen=True)
class VerdictBody(VerdictRequest):
    """``POST /api/feedback``'s body: the review page's, its event named ``CAMERA/EVENT``."""

    def __post_init__(self) -> None:
        if "/" not in self.event:
            raise TypeError("event must be CAMERA/EVENT")


class EventRoutes:
    def __init__(self, view: SiteView) -> None:
        self.view = view

    def routes(self) -> list[Route]:
        return [Route("/api/events", self.events), Route("/api/feed", self.feed),
                Route("/api/feedback", self.feedback, methods=["GET", "POST"]),
                Route("/media/{camera}/{kind}/{name:path}", self.media)]

    async def events(self, request: Request) -> Response:
        camera = request.query_params.get("camera")
        try:
            limit = int(request.query_params.get("limit", "1000"))
            if limit < 1:
                raise ValueError
        except ValueError:
            return json_response(400, {"error": "limit: expected a positive integer"})
        names = self._cameras(camera)
        if isinstance(names, Response):
            return names
        lines = await run_in_threadpool(self.view.event_lines, names, request.query_params.get("since"))
        return JSONResponse({"events": lines[-limit:]}, headers=NO_STORE)

    async def feed(self, request: Request) -> Response:
        camera = request.query_params.get("camera")
        if isinstance(unknown := self._cameras(camera), Response):
            return unknown
        items = await run_in_threadpool(self.view.feed, camera)
        return JSONResponse({"events": items}, headers=NO_STORE)

    def _cameras(self, camera: str | None) -> list[str] | Response:
        """The cameras a ``?camera=`` asks for (all when absent), or 404 for one the site does not have."""
        names = self.view.camera_names()
        if camera is not None and camera not in names:
            return json_response(404, {"error": f"unknown camera {camera!r}; cameras: {sorted(names)}"})
        return names if camera is None else [camera]

    async def feedback(self, request: Request) -> Response:
        if request.method == "GET":
            verdicts, bad = await run_in_threadpool(self.view.verdicts)
            return json_response(200, {"verdicts": verdicts, "unreadable_lines": bad})
        if not request.headers.get("content-type", "").startswith("application/json"):
            return json_response(415, {"error": "expected a JSON body (Content-Type: application/json)"})
        try:
            asked = as_model(VerdictBody, await read_body(request))
        except BodyTooLarge as err:
            return json_response(413, {"error": str(err)})
        except (ValueError, TypeError, KeyError) as err:
            return json_response(400, {"error": f'expected {{"event": "CAMERA/EVENT", "verdict": "normal"|"anomaly"}} '
                                                f"({err})"})
        user = request.scope.get("user")
        try:
            line = await run_in_threadpool(self.view.record_verdict, asked.event, asked.verdict,
                                           f"site:{user}" if user else "site")
        except UnknownEventError as err:
            return json_response(404, {"error": str(err)})
        except UsageError as err:
            return json_response(400, {"error": str(err)})
        except InputError as err:  # its footage is not written yet
            return json_response(409, {"error": str(err)})
        except OSError as err:
            return json_response(500, {"error": f"{err.filename}: {err.strerror or err}"})
        return json_response(200, line)

    async def media(self, request: Request) -> Response:
        camera, kind, name = (request.path_params[k] for k in ("camera", "kind", "name"))
        root = self.view.media_root(camera)
        path = None if root is None or kind not in MEDIA else inside(root / kind, name)
        if path is None or path.suffix != MEDIA[kind] or not path.is_file():
            return json_response(404, {"error": f"not found: {request.url.path}"})
        if kind == "snapshots":  # replaced while an event's peak rises: read at once, not stat-then-stream
            data = await run_in_threadpool(path.read_bytes)
            return Response(data, media_type="image/jpeg", headers=NO_STORE)
        return FileResponse(path, headers=NO_STORE)  # a clip, complete once there (byte ranges: seeking)


class StreamRoutes:
    """Every event line of every camera as a change of its item, each clip and snapshot once written, each verdict,
    pushed to the pages listening (one asyncio queue each, filled from the site's threads); :class:`Stopping` ends
    their streams."""

    BOUND = 1000  # messages waiting for one page; beyond, its oldest are dropped (it reloads the feed on reconnect)

    def __init__(self, view: SiteView) -> None:
        self.view = view
        self._subs: dict[asyncio.Queue, asyncio.AbstractEventLoop] = {}
        self._lock = threading.Lock()
        view.subscribe(self)

    def routes(self) -> list[Route]:
        return [Route("/api/stream", self.stream)]

    def __call__(self, event: SiteEvent) -> None:
        msg: dict | None
        if isinstance(event, EventLine):
            msg = feed_item(event.camera, event.line, event.clips)  # a sink's call: the site's tables are not asked
            if msg is None:
                return
            msg = {"kind": "event", "item": msg}
        elif isinstance(event, Written):
            msg = {"kind": "written", "id": f"{event.camera}/{event.event}", "what": event.kind}
        elif isinstance(event, Verdict):
            msg = {"kind": "verdict", "id": event.key, "line": event.line}
        elif isinstance(event, Stopping):
            msg = None  # ends the streams
        else:
            return
        with self._lock:
            subs = list(self._subs.items())
        for q, loop in subs:
            try:
                loop.call_soon_threadsafe(_put, q, msg)
            except RuntimeError:  # its loop is closed
                self._unsubscribe(q)

    def _unsubscribe(self, q: asyncio.Queue) -> None:
        with self._lock:
            self._subs.pop(q, None)

    async def stream(self, request: Request) -> Response:
        queue: asyncio.Queue = asyncio.Queue(maxsize=self.BOUND)
        with self._lock:
            self._subs[queue] = asyncio.get_running_loop()

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
                self._unsubscribe(queue)

        return StreamingResponse(messages(), media_type="text/event-stream",
                                 headers={**NO_STORE, "X-Accel-Buffering": "no"})


def _put(q: asyncio.Queue, msg: dict | None) -> None:
    if q.full():
        q.get_nowait()
    q.put_nowait(msg)
