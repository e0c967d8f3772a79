"""``vad review``: a run's review page served on 127.0.0.1 (Starlette on uvicorn), where it can record verdicts.

Routes (:func:`review_app`): ``/``, ``RUN/review.html``; ``/<path>``, the run's own files (never a hidden name nor one
outside the run folder; byte ranges for video seeking); ``/source/<clip>``, a scored clip's source video;
``/api/feedback``: GET the verdicts so far, POST ``{"event": ID, "verdict": "normal"|"anomaly"}`` records one
(:func:`vad.review.verdicts.record_verdict`) and answers the line written (400: a bad body or verdict; 404: an
unknown event; 413: a body over 16 KiB; 415: not JSON; 500: the verdict is not on disk). Only this server's own
pages may ask it (:class:`SameOrigin`), so another site open in the browser can neither read the run nor give
verdicts.
"""

from __future__ import annotations

import logging
from dataclasses import astuple, dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from vad.errors import UnknownEventError, UsageError, VadError
from vad.review.verdicts import read_verdicts, record_verdict
from vad.runs import RunFolder, RunFolderError, read_manifest
from vad.web import MAX_BODY, NO_STORE, AppServer, BodyTooLarge, as_model, http_error, inside, listen, read_body
from vad.web import json_response as _json

log = logging.getLogger(__name__)


class ReviewServer(AppServer):
    """``RUN/review.html`` served on 127.0.0.1 (never another address) at ``port`` (0: any free port), listening
    once constructed. ``serve_forever`` blocks (runnable in a thread; in the main thread Ctrl-C raises
    ``KeyboardInterrupt``) until ``shutdown``; ``server_close`` frees the port."""

    def __init__(self, run: Path | str, port: int = 0) -> None:
        self.folder = RunFolder(run)
        sock = listen("127.0.0.1", port)
        self.server_address: tuple[str, int] = sock.getsockname()[:2]
        self.port = self.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        super().__init__(review_app(self.folder, self.port), sock, "vad-review", graceful=3, proxy_headers=False)

    serve_forever, shutdown, server_close = AppServer.run, AppServer.stop, AppServer.close


class SameOrigin:
    """ASGI middleware: 403 unless the request's Host is this server (``127.0.0.1:PORT`` or ``localhost:PORT``)
    and, for a method other than GET and HEAD, its Origin is this server too."""

    def __init__(self, app: ASGIApp, port: int) -> None:
        self.app = app
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self.origins = {f"http://{h}" for h in self.hosts}
        self.url = f"http://127.0.0.1:{port}/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            safe = scope["method"] in ("GET", "HEAD")
            if headers.get("host") not in self.hosts or not (origin in self.origins or (origin is None and safe)):
                refused = _json(403, {"error": f"refused: only pages of {self.url} may ask this server"})
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def review_app(run: RunFolder | Path | str, port: int) -> Starlette:
    """The review server's ASGI app for ``run``, answering only requests addressed to 127.0.0.1:``port``."""
    app = Starlette(routes=[Route("/", _page), Route("/api/feedback", _feedback, methods=["GET", "POST"]),
                            Route("/source/{clip:path}", _source), Route("/{path:path}", _run_file)],
                    middleware=[Middleware(SameOrigin, port=port)],
                    exception_handlers={HTTPException: http_error})
    app.state.folder = run if isinstance(run, RunFolder) else RunFolder(run)
    return app


def _file(path: Path | None, request: Request) -> Response:
    if path is None or not path.is_file():
        return _json(404, {"error": f"not found: {request.url.path}"})
    return FileResponse(path, headers=NO_STORE)


def _page(request: Request) -> Response:
    return _file(request.app.state.folder.review_page, request)


def _source(request: Request) -> Response:
    """The source video of a scored clip (none for a frame folder, or a clip not scored)."""
    try:
        record = read_manifest(request.app.state.folder, parts=False).get(request.path_params["clip"])
    except VadError as err:  # a manifest of another version
        return _json(500, {"error": str(err)})
    return _file(Path(record.path) if record is not None and record.kind == "video" else None, request)


def _run_file(request: Request) -> Response:
    return _file(inside(request.app.state.folder.root, request.path_params["path"]), request)


@dataclass(frozen=True)
class VerdictRequest:
    """``POST /api/feedback``'s body."""

    event: str
    verdict: str  # normal | anomaly


async def _feedback(request: Request) -> Response:
    folder: RunFolder = request.app.state.folder
    if request.method == "GET":
        verdicts, bad = await run_in_threadpool(read_verdicts, folder)
        return _json(200, {"verdicts": verdicts, "unreadable_lines": bad})
    if not request.headers.get("content-type", "").startswith("application/json"):
        return _json(415, {"error": f"expected a JSON body (Content-Type: application/json); got Content-Type "
                                    f"{request.headers.get('content-type')!r}"})
    try:
        body = await read_body(request)
    except BodyTooLarge:
        return _json(413, {"error": f"a verdict's body is over {MAX_BODY} bytes; expected a small JSON object"})
    try:
        event, verdict = astuple(as_model(VerdictRequest, body))
    except (ValueError, TypeError, KeyError) as err:
        return _json(400, {"error": f'expected {{"event": ID, "verdict": "normal"|"anomaly"}}; got '
                                    f"{body[:200].decode(errors='replace')!r} ({err!r})"})
    try:
        line = await run_in_threadpool(record_verdict, folder, event, verdict, "review")
    except UnknownEventError as err:
        return _json(404, {"error": str(err)})
    except UsageError as err:  # an unknown verdict
        return _json(400, {"error": str(err)})
    except VadError as err:  # the run's events file is missing or unreadable
        return _json(500, {"error": str(err)})
    except OSError as err:  # the verdict is not on disk: say so
        return _json(500, {"error": f"{err.filename or folder.feedback}: {err.strerror or err}"})
    log.info(f"verdict: {line['event']} {line['verdict']}")
    return _json(200, line)


def serve(run: Path | str, port: int = 8765, open_browser: bool = False) -> None:
    """Serve the review page of ``run`` on 127.0.0.1:``port`` (0: any free port) until interrupted."""
    folder = RunFolder(run)
    if not folder.review_page.is_file():
        raise RunFolderError(f"{folder.review_page} not found: evaluate the run first (vad evaluate --run {run})")
    try:
        server = ReviewServer(run, port)
    except OSError as err:
        raise UsageError(f"cannot listen on 127.0.0.1:{port} ({err.strerror or err}); choose another --port (0: any "
                         "free port)") from None
    log.info(f"review page of {folder.root}: {server.url} (127.0.0.1 only); verdicts go to {folder.feedback}. "
             "Ctrl-C stops.")
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
