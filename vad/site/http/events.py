"""The events and their evidence: ``GET /api/events``, ``GET /api/feed``, ``GET``/``POST /api/feedback``,
``GET /media/<camera>/<snapshots|clips>/<event>``."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from vad.errors import InputError, UnknownEventError, UsageError
from vad.site.core import SiteView
from vad.web import NO_STORE, BodyTooLarge, as_model, inside, json_response, read_body

MEDIA = {"snapshots": ".jpg", "clips": ".mp4"}


@dataclass(frozen=True)
class VerdictBody:
    """``POST /api/feedback``'s body."""

    event: str  # CAMERA/EVENT
    verdict: str  # normal | anomaly

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
        names = self.view.camera_names()
        if camera is not None and camera not in names:
            return json_response(404, {"error": f"unknown camera {camera!r}; cameras: {sorted(names)}"})
        lines = await run_in_threadpool(self.view.event_lines, names if camera is None else [camera],
                                        request.query_params.get("since"))
        return JSONResponse({"events": lines[-limit:]}, headers=NO_STORE)

    async def feed(self, request: Request) -> Response:
        items = await run_in_threadpool(self.view.feed, request.query_params.get("camera"))
        return JSONResponse({"events": items}, headers=NO_STORE)

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
