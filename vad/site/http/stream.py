"""``GET /api/stream``: server-sent events, the site's events as they happen (:class:`StreamRoutes` is a subscriber
of the site's bus)."""

from __future__ import annotations

import asyncio
import json
import threading

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from vad.site.core import EventLine, SiteEvent, SiteView, Stopping, Verdict, Written, feed_item
from vad.web import NO_STORE


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
            msg = feed_item(event.camera, event.line, self.view.clips(event.camera))
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
