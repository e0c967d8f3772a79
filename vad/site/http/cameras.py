"""The cameras and the service's state: ``GET /healthz``, ``/api/cameras``, ``/api/cameras/<camera>/frame.jpg``,
``/api/storage``, ``/metrics`` (the site's and the door's)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vad.site.auth import Throttle
from vad.site.core import SiteView
from vad.web import NO_STORE, json_response


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
