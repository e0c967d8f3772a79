"""The control room over HTTP (Starlette on uvicorn, in a thread of ``vad serve``), one router per resource:

- :mod:`.session`: ``GET /``, the live page (``vad/review/templates/review.html`` with ``live``: the cameras' grid,
  the event feed as cards, verdicts by ``n`` / ``a``), ``GET /login``, ``POST /api/login``, ``POST /api/logout``;
- :mod:`.cameras`: ``GET /healthz`` (200 while the loop runs and some camera is not down, else 503),
  ``/api/cameras`` (each camera's state, rates, drops, latency, open event, last gap, score; ``?history=S``: its
  highest score per second over ``S`` s), ``/api/cameras/<camera>/frame.jpg`` (the latest scored frame, its
  anomaly map drawn while an event is open), ``/api/storage`` (:mod:`vad.site.retention`), ``/metrics`` (Prometheus);
- :mod:`.events`: ``GET /api/events?camera=&since=&limit=`` (event and gap lines, oldest first, the newest ``limit``,
  default 1000), ``GET /api/feed`` (one item per event), ``GET``/``POST /api/feedback`` (verdicts on
  ``CAMERA/EVENT``, recorded into the camera's run; 409 while its footage is not written yet), ``GET /media/<camera>/
  snapshots/<event>.jpg`` and ``clips/<event>.mp4`` (nothing else under ``out``);
- :mod:`.stream`: ``GET /api/stream``, server-sent events: items' changes, evidence written, verdicts given.

Behind the door of :mod:`vad.site.auth`: every route but ``/healthz`` and the login answers 401 without a session or
token once users exist (and they must for any address beyond loopback); over TLS with ``http.tls``.
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
from vad.site.http.stream import StreamRoutes
from vad.web import AppServer, http_error, listen

__all__ = ["Gate", "SiteServer", "site_app"]

log = logging.getLogger(__name__)


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
