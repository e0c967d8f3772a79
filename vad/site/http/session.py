"""The control room's page and its login: ``GET /``, ``GET /login``, ``POST /api/login``, ``POST /api/logout``."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from vad.review.page import render_login, render_page
from vad.site.auth import COOKIE, FAIL_DELAY, Gate
from vad.site.core import SiteView
from vad.web import NO_STORE, BodyTooLarge, as_model, json_response, read_body

log = logging.getLogger(__name__)

VERIFYING = 2  # passwords checked at once (argon2id holds 64 MiB per check)
MAX_WAITING = 64  # logins waiting for a check; beyond, 429


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
