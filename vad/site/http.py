"""A site's health, cameras, events and metrics over HTTP (Starlette on uvicorn, in a thread of ``vad serve``).

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
  histogram of batch times), ``vad_batch_frames{model}``, ``vad_mqtt_dropped_total`` and ``vad_mqtt_connected``.

It binds ``127.0.0.1`` unless ``http.host`` says otherwise: who may reach it from another machine (logins, TLS) is
the control room's business, not yet here.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from pathlib import Path

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vad.runs import WatchFolder
from vad.site.config import HttpConfig

log = logging.getLogger(__name__)

EVENT_LINES = ("start", "update", "end", "gap")


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


def site_app(site) -> Starlette:
    """The site's ASGI app (see the module docstring)."""

    async def healthz(request: Request) -> Response:
        ok = site.healthy()
        return JSONResponse({"status": "ok" if ok else "down"}, 200 if ok else 503)

    async def cameras(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(site.camera_states))

    async def events(request: Request) -> Response:
        camera = request.query_params.get("camera")
        since = request.query_params.get("since")
        try:
            limit = int(request.query_params.get("limit", "1000"))
            if limit < 1:
                raise ValueError
        except ValueError:
            return JSONResponse({"error": "limit: expected a positive integer"}, 400)
        names = list(site.cameras) if camera is None else [camera]
        if camera is not None and camera not in site.cameras:
            return JSONResponse({"error": f"unknown camera {camera!r}; cameras: {sorted(site.cameras)}"}, 404)
        lines = await run_in_threadpool(_read_events, site.cfg.out, names, since)
        return JSONResponse({"events": lines[-limit:]})

    async def metrics(request: Request) -> Response:
        return Response(await run_in_threadpool(site.metrics.text), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/healthz", healthz), Route("/api/cameras", cameras),
                             Route("/api/events", events), Route("/metrics", metrics)])


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


class SiteServer:
    """``site_app`` served by uvicorn in a thread on ``cfg.host:cfg.port``."""

    def __init__(self, site, cfg: HttpConfig) -> None:
        self.socket = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((cfg.host, cfg.port))
            self.socket.listen(128)
        except OSError as err:
            self.socket.close()
            from vad.errors import UsageError

            raise UsageError(f"http: cannot listen on {cfg.host}:{cfg.port} ({err.strerror or err}); choose another "
                             "http.port (0: any free port)") from None
        host, port = self.socket.getsockname()[:2]
        self.port = port
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
        config = uvicorn.Config(site_app(site), log_level="warning", log_config=None, access_log=False,
                                lifespan="off", server_header=False, timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]},
                                       name="vad-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self.thread.join(timeout=5)
        self.socket.close()
