"""What vad's two web servers share (``vad review``: :mod:`vad.review.server`; ``vad serve``: :mod:`vad.site.http`)."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import fields
from pathlib import Path, PurePosixPath
from typing import TypeVar

import uvicorn
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

NO_STORE = {"Cache-Control": "no-store"}
MAX_BODY = 1 << 14  # bytes of a request's body (a verdict, a login): small JSON objects
T = TypeVar("T")


class BodyTooLarge(ValueError):
    """A request body over its bound (answered 413)."""


def json_response(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    """``body`` as JSON with ``status``, never cached."""
    return JSONResponse(body, status, headers={**NO_STORE, **(headers or {})})


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own errors (404 of an unknown route, 405) as JSON naming the request."""
    return json_response(exc.status_code, {"error": f"{exc.detail}: {request.method} {request.url.path}"})


def parse_json(body: bytes | str) -> object:
    """A request's JSON body; a ``ValueError`` for anything that is not JSON, nesting too deep included (Python's
    parser recurses: ``[[[[...]]]]`` in 16 KiB would otherwise be a ``RecursionError``, an answer 500)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request's body, read until ``limit`` bytes at most: :class:`BodyTooLarge` beyond (never held whole)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"a body over {limit} bytes; expected a small JSON object")
    return body


def as_model(model: type[T], body: bytes) -> T:
    """``body`` (JSON) as the dataclass ``model``, whose fields are all strings: a ``ValueError`` (not JSON), a
    ``KeyError`` (a field missing) or a ``TypeError`` (not an object, a field not a string) otherwise."""
    asked = parse_json(body)
    if not isinstance(asked, dict):
        raise TypeError(f"expected a JSON object, got {type(asked).__name__}")
    values = {f.name: asked[f.name] for f in fields(model)}
    wrong = [k for k, v in values.items() if not isinstance(v, str)]
    if wrong:
        raise TypeError(f"{', '.join(wrong)}: expected a string")
    return model(**values)


def inside(root: Path, path: str) -> Path | None:
    """The file under ``root`` that the (decoded) URL path ``path`` names; ``None`` for a hidden name (``.lock``,
    ``..``), a NUL byte, or one outside ``root``."""
    if "\0" in path:  # no file has one; the OS refuses the name
        return None
    parts = PurePosixPath("/", path).parts[1:]
    if not parts or any(p.startswith(".") for p in parts):
        return None
    target = root.joinpath(*parts).resolve()
    return target if target.is_relative_to(root.resolve()) else None


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (0: any free port); the ``OSError`` of a port taken, after closing."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class AppServer:
    """An ASGI app answered by uvicorn on a listening socket: :meth:`run` blocks (in the caller's thread, or in
    :attr:`thread` once started)."""

    def __init__(self, app, sock: socket.socket, name: str, graceful: float, **config) -> None:
        self.socket = sock
        self._server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", log_config=None, access_log=False, lifespan="off", server_header=False,
            timeout_graceful_shutdown=graceful, **config))
        self._running = threading.Lock()  # held while run() runs
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)

    def run(self) -> None:
        with self._running:
            self._server.run(sockets=[self.socket])

    def stop(self, timeout: float | None = None) -> None:
        """Stop answering and wait for :meth:`run` to return (answers under way get the graceful seconds)."""
        self._server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=timeout)
        else:  # run() in a thread of the caller's, or never
            with self._running:
                pass

    def close(self) -> None:
        """Free the port."""
        self.socket.close()
