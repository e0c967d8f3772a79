"""Who may reach a site's HTTP server (docs/site.md, "The door"): users with passwords (argon2id hashes) and tokens
for scripts (SHA-256, shown once) in the users file, re-read when it changes; sessions in memory (the cookie
``vad_session``); the door (:class:`Door`): an open server only on loopback, answering only requests addressed to a
loopback name (no DNS rebinding); with users, 401 without a session or a token on every route but ``OPEN_PATHS``; a
browser's request that changes something must carry this server's ``Origin``, else 403. Failed logins are slowed
(``FAIL_DELAY``), counted, logged, and ``MAX_FAILURES`` within ``FAIL_WINDOW`` s from one address get 429.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from http.cookies import SimpleCookie
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from vad.atomic import write_text
from vad.errors import ConfigError, UsageError
from vad.web import NO_STORE, json_response

log = logging.getLogger(__name__)

COOKIE = "vad_session"
FAIL_DELAY = 1.0  # seconds before a failed login is answered
MAX_FAILURES = 5  # failed logins from one address within FAIL_WINDOW, then 429
FAIL_WINDOW = 300.0
OPEN_PATHS = {"/healthz", "/login", "/api/login"}  # answered without a session
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class UsersFile:
    """The users and tokens of a site, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        from argon2 import PasswordHasher

        self.path = Path(path)
        self.hasher = PasswordHasher()
        self._stamp: tuple[int, int] | None = None
        self._data: dict = {"users": {}, "tokens": {}}
        self._lock = threading.Lock()
        self._dummy = self.hasher.hash(secrets.token_hex(8))  # an unknown user costs what a wrong password does

    def _read(self) -> dict:
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._stamp, self._data = None, {"users": {}, "tokens": {}}
                return self._data
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                try:
                    data = json.loads(self.path.read_text())
                    if not (isinstance(data.get("users", {}), dict) and isinstance(data.get("tokens", {}), dict)):
                        raise ValueError("users and tokens must be mappings")
                except (ValueError, AttributeError) as err:
                    raise ConfigError(f"{self.path}: not a users file of vad serve ({err}); expected "
                                      '{"users": {...}, "tokens": {...}}') from None
                self._data = {"users": data.get("users", {}), "tokens": data.get("tokens", {})}
                self._stamp = stamp
            return self._data

    def configured(self) -> bool:
        """Whether anyone can get in: some user or token."""
        data = self._read()
        return bool(data["users"] or data["tokens"])

    def names(self) -> tuple[list[str], list[str]]:
        data = self._read()
        return sorted(data["users"]), sorted(data["tokens"])

    def check_password(self, user: str, password: str) -> bool:
        from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

        entry = self._read()["users"].get(user)
        try:
            if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
                self.hasher.verify(self._dummy, password + "x")  # the same work, then no
                return False
            return self.hasher.verify(entry["hash"], password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def check_token(self, token: str) -> str | None:
        """The name of the token ``token``, or None."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        for name, entry in self._read()["tokens"].items():
            if isinstance(entry, dict) and hmac.compare_digest(str(entry.get("sha256", "")), digest):
                return name
        return None

    def add_user(self, name: str, password: str) -> None:
        if not name or any(c.isspace() for c in name):
            raise UsageError(f"user name {name!r}: expected a non-empty name without spaces")
        if len(password) < 8:
            raise UsageError("the password is shorter than 8 characters; choose a longer one")
        self._update("users", name, {"hash": self.hasher.hash(password), "added": _now()})

    def add_token(self, name: str) -> str:
        """A new token named ``name`` (replacing one of that name); returns it (it is not stored, only its hash)."""
        if not name or any(c.isspace() for c in name):
            raise UsageError(f"token name {name!r}: expected a non-empty name without spaces")
        token = secrets.token_urlsafe(32)
        self._update("tokens", name, {"sha256": hashlib.sha256(token.encode()).hexdigest(), "added": _now()})
        return token

    def _update(self, kind: str, name: str, entry: dict) -> None:
        data = dict(self._read())
        data[kind] = {**data[kind], name: entry}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(json.dumps(data, indent=1) + "\n", self.path)
        self.path.chmod(0o600)


class Sessions:
    """Logged-in sessions: random tokens kept in memory until they expire."""

    def __init__(self, hours: float) -> None:
        self.seconds = hours * 3600
        self._live: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def open(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._live = {k: v for k, v in self._live.items() if v[1] > now}
            self._live[token] = (user, now + self.seconds)
        return token

    def user(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            entry = self._live.get(token)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def close(self, token: str | None) -> None:
        with self._lock:
            self._live.pop(token or "", None)


class Throttle:
    """Failed logins per address: counted, and an address with ``MAX_FAILURES`` in the window, counting the logins
    of it still being checked, is refused. Global IPv6 addresses count per /64 (one host holds a whole /64); the table
    holds at most ``MAX_ADDRESSES`` addresses (the expired go first, then the oldest)."""

    MAX_ADDRESSES = 10000

    def __init__(self) -> None:
        self.failures: dict[str, deque[float]] = {}
        self.in_flight: dict[str, int] = {}
        self.total = 0
        self._lock = threading.Lock()

    def blocked(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: now)."""
        with self._lock:
            return self._wait(_who(address))

    def begin(self, address: str) -> float:
        """Take a login attempt from ``address``: 0 and it counts as in flight until :meth:`end`; else the seconds
        until it may try again (nothing taken)."""
        who = _who(address)
        with self._lock:
            wait = self._wait(who)
            if not wait:
                self.in_flight[who] = self.in_flight.get(who, 0) + 1
            return wait

    def end(self, address: str, ok: bool) -> None:
        """The attempt taken by :meth:`begin` is over: a failure is counted unless ``ok``."""
        who = _who(address)
        with self._lock:
            left = self.in_flight.get(who, 1) - 1
            if left > 0:
                self.in_flight[who] = left
            else:
                self.in_flight.pop(who, None)
            if not ok:
                self._recent(who).append(time.monotonic())
                self.total += 1

    def _wait(self, who: str) -> float:
        recent = self._recent(who) if who in self.failures else deque()
        if len(recent) + self.in_flight.get(who, 0) < MAX_FAILURES:
            return 0.0
        return max(1.0, recent[0] + FAIL_WINDOW - time.monotonic()) if recent else float(FAIL_DELAY)

    def _recent(self, who: str) -> deque[float]:
        if who not in self.failures and len(self.failures) >= self.MAX_ADDRESSES:
            self._make_room()
        q = self.failures.setdefault(who, deque())
        while q and q[0] < time.monotonic() - FAIL_WINDOW:
            q.popleft()
        return q

    def _make_room(self) -> None:
        since = time.monotonic() - FAIL_WINDOW
        self.failures = {k: q for k, q in self.failures.items() if q and q[-1] >= since}
        while len(self.failures) >= self.MAX_ADDRESSES:
            self.failures.pop(next(iter(self.failures)))


def _who(address: str) -> str:
    """The key an address is counted under: itself, or a global IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip.is_global:  # one host gets a whole /64 from its provider; on a LAN each address is its own
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def check_binding(host: str, users: UsersFile) -> None:
    """Refuse to serve beyond loopback without anyone who could log in."""
    if not is_loopback(host) and not users.configured():
        raise ConfigError(f"http.host {host}: serving beyond this machine needs a login, and {users.path} has no user "
                          "or token; add one (vad serve --config SITE --add-user NAME), or bind http.host: "
                          "127.0.0.1")


@dataclass(frozen=True)
class Gate:
    """The door's parts; ``open``: an open loopback server, ``secure``: served over TLS (secure cookies), ``origins``:
    the other origins it believes (a proxy's)."""

    users: UsersFile
    sessions: Sessions
    throttle: Throttle
    open: bool
    secure: bool = False
    origins: tuple[str, ...] = ()


class Door:
    """ASGI middleware: the rules of the module docstring; ``scope["user"]`` is who asked (None: open)."""

    def __init__(self, app: ASGIApp, users: UsersFile, sessions: Sessions, loopback_open: bool,
                 origins: tuple[str, ...] = ()) -> None:
        self.app, self.users, self.sessions = app, users, sessions
        self.loopback_open = loopback_open
        self.origins = set(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        scheme = scope.get("scheme", "http")
        method, path = scope["method"], scope["path"]
        cookie = SimpleCookie(headers.get("cookie", ""))
        session = cookie[COOKIE].value if COOKIE in cookie else None
        bearer = headers.get("authorization", "")
        token = bearer[7:].strip() if bearer.lower().startswith("bearer ") else None
        required = self.users.configured() or not self.loopback_open  # beyond loopback with no one: refused at start
        if not required and host.rsplit(":", 1)[0].strip("[]") not in ("127.0.0.1", "localhost", "::1"):
            await _refuse(403, "refused: an open (no login) server answers only requests to 127.0.0.1 or localhost",
                          scope, receive, send)
            return
        user = None
        if token is not None:
            name = self.users.check_token(token)
            user = f"token:{name}" if name else None
            if user is None and required:
                await _refuse(401, "unknown token", scope, receive, send)
                return
        elif session is not None:
            user = self.sessions.user(session)
        if method in UNSAFE and token is None:  # a browser's request: it must come from this server's pages
            origin = headers.get("origin")
            if origin is None or (origin != f"{scheme}://{host}" and origin not in self.origins):
                await _refuse(403, f"refused: a {method} must come from this server's own pages (Origin "
                                   f"{origin!r}, expected {scheme}://{host})", scope, receive, send)
                return
        if required and user is None and path not in OPEN_PATHS:
            if method == "GET" and (path == "/" or path.endswith(".html")):
                await _login_redirect(scope, receive, send)
            else:
                await _refuse(401, "log in first (POST /api/login) or send Authorization: Bearer TOKEN", scope,
                              receive, send)
            return
        scope["user"] = user
        await self.app(scope, receive, send)


async def _refuse(status: int, message: str, scope: Scope, receive: Receive, send: Send) -> None:
    headers = {"WWW-Authenticate": 'Bearer realm="vad"'} if status == 401 else None
    await json_response(status, {"error": message}, headers)(scope, receive, send)


async def _login_redirect(scope: Scope, receive: Receive, send: Send) -> None:
    """401 for a page: a body that sends the browser to the login page (a script's status still says 401)."""
    body = ('<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url=/login">'
            '<title>log in</title><p><a href="/login">log in</a></p>')
    await Response(body, 401, media_type="text/html", headers=NO_STORE)(scope, receive, send)
