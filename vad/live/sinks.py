"""Where a live watch's lines go: sinks, each a ``Callable[[dict], None]``; when it has a ``close()`` the watch calls
it once at the end, and when it counts lines it could not deliver in ``failed`` the status line adds them up
(``webhook_failed``). A sink must not block the loop: one that talks to the network queues the line and sends it
from a thread of its own. The file sink is ``events.jsonl``'s owner, :class:`vad.live.eventlog.EventLog`.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from vad.live import iso, lower_priority
from vad.live.eventlog import event_log

Sink = Callable[[dict], None]


def interrupted_events(path: Path) -> list[dict]:
    """The ``end`` lines that the events of ``path`` still open need: a watch killed mid-event (SIGKILL, power) left
    their ``start`` and ``update`` lines and never an ``end``. Each is the event's last line as an ``end`` at this
    time, ``reason: interrupted``, without a clip (its half-written file is not one)."""
    open_: dict[str, dict] = {}
    for line in event_log(path).lines():
        if not isinstance(line.get("event"), str):
            continue
        if line["type"] in ("start", "update"):
            open_[line["event"]] = line
        elif line["type"] == "end":
            open_.pop(line["event"], None)
    now = iso(time.time())
    return [{**last, "type": "end", "wall_time": now, "score": None, "clip": None, "reason": "interrupted",
             "end_frame": last.get("frame")} for last in open_.values()]


class StdoutSink:
    """Lines on stdout (JSON lines, flushed per line)."""

    def __call__(self, line: dict) -> None:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


class WebhookSink:
    """Lines POSTed (JSON) to ``url`` by a thread of its own, from a queue of at most ``bound`` lines; a line is
    tried ``attempts`` times (backing off 0.5 s, 1 s, ...), then counted in :attr:`failed`, as is a line that finds
    the queue full."""

    def __init__(self, url: str, bound: int = 1000, attempts: int = 3, timeout: float = 5.0) -> None:
        self.url, self.attempts, self.timeout = url, attempts, timeout
        self._failed, self._lock = 0, threading.Lock()  # counted from the loop (queue full) and the thread
        self.queue: queue.Queue[str | None] = queue.Queue(maxsize=bound)
        self.thread = threading.Thread(target=self._post_all, name="vad-webhook", daemon=True)
        self.thread.start()

    @property
    def failed(self) -> int:
        with self._lock:
            return self._failed

    def __call__(self, line: dict) -> None:
        try:
            self.queue.put_nowait(json.dumps(line))
        except queue.Full:
            self._fail()

    def close(self) -> None:
        """Send what is queued (waiting 20 s at most), then stop the thread."""
        self.queue.put(None)
        self.thread.join(timeout=20)

    def _fail(self) -> None:
        with self._lock:
            self._failed += 1

    def _post_all(self) -> None:
        lower_priority()
        while (text := self.queue.get()) is not None:
            for attempt in range(self.attempts):
                try:
                    req = urllib.request.Request(self.url, data=text.encode(), method="POST",
                                                 headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                        resp.read()
                    break
                except Exception:  # a failing webhook never stops scoring: retried, then counted
                    time.sleep(0.5 * 2**attempt)
            else:
                self._fail()


def standard_sinks(events: Path | None, stdout: bool, webhook: str | None) -> list[Sink]:
    """The sinks a watch's options ask for, in this order: ``events`` (the events.jsonl file; None: none),
    stdout, a webhook URL."""
    sinks: list[Sink] = []
    if events is not None:
        sinks.append(event_log(events))
    if stdout:
        sinks.append(StdoutSink())
    if webhook:
        sinks.append(WebhookSink(webhook))
    return sinks
