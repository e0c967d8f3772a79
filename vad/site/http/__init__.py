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

The app is built by :func:`site_app` from a :class:`~vad.site.core.SiteView` (what the site answers) and a
:class:`Gate` (the door's parts), one router per resource: :mod:`.session` (the page, login, logout),
:mod:`.cameras` (health, cameras, frames, storage, metrics), :mod:`.events` (events, the feed, verdicts, media),
:mod:`.stream` (the live feed). Every route but ``/healthz`` and the login answers 401 without a session or token
once users exist (and they must for any address beyond loopback); over TLS with ``http.tls``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from vad.errors import UsageError
from vad.site.auth import Door, Gate, Sessions, Throttle, UsersFile, check_binding, is_loopback
from vad.site.config import HttpConfig
from vad.site.core import SiteView
from vad.site.http.cameras import CameraRoutes
from vad.site.http.events import EventRoutes
from vad.site.http.session import SessionRoutes
from vad.site.http.stream import LiveFeed, StreamRoutes
from vad.web import AppServer, http_error, listen

__all__ = ["Gate", "LiveFeed", "SiteServer", "site_app"]

log = logging.getLogger(__name__)


def site_app(view: SiteView, gate: Gate) -> Starlette:
    """The site's ASGI app (see the module docstring) answering from ``view`` behind the door of ``gate``."""
    routes = [*SessionRoutes(view, gate).routes(), *CameraRoutes(view, gate.throttle).routes(),
              *EventRoutes(view).routes(), *StreamRoutes(view).routes()]
    middleware = [Middleware(Door, users=gate.users, sessions=gate.sessions, loopback_open=gate.open,
                             origins=gate.origins)]
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error})


class SiteServer:
    """``site_app`` served by uvicorn in a thread on ``cfg.host:cfg.port`` (HTTPS with ``cfg.tls``); refuses (a
    :class:`~vad.errors.ConfigError`) an address beyond loopback without users (:func:`vad.site.auth.check_binding`)."""

    def __init__(self, view: SiteView, cfg: HttpConfig) -> None:
        users = UsersFile(Path(cfg.auth_file))
        check_binding(cfg.host, users)
        self.users = users
        gate = Gate(users, Sessions(cfg.session_hours), Throttle(), is_loopback(cfg.host), bool(cfg.tls),
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
        self._server.start()
        users, tokens = self.users.names()
        who = (f"{len(users)} user(s), {len(tokens)} token(s) in {self.users.path}" if users or tokens
               else "open: no login (loopback only)")
        log.info(f"http: {self.url} (the control room; /healthz, /api/..., /metrics); {who}")

    def stop(self) -> None:
        self._server.stop(timeout=5)
        self._server.close()
