"""The site's core without transport: what happens, as one typed event per kind published on a :class:`Bus`, and
what the HTTP app may ask, as the :class:`SiteView` protocol.

Publishers: the cameras (:class:`EventLine`, :class:`StatusLine`, :class:`Written`, :class:`Score`), the site
(:class:`CameraAdded`, :class:`Stopping`), the model workers (:class:`Batch`), verdicts (:class:`Verdict`) and
retention (:class:`Storage`). Subscribers: MQTT (:mod:`vad.site.mqtt`), the live feed of the control room
(:mod:`vad.site.http.stream`) and the metrics (:mod:`vad.site.metrics`); none knows another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vad.live.eventlog import EVENT_LINES


@dataclass(frozen=True)
class EventLine:
    """A camera's ``start``, ``update``, ``end`` or ``gap`` line, as written to its events.jsonl."""

    camera: str
    line: dict


@dataclass(frozen=True)
class StatusLine:
    """A camera's ``status`` line."""

    camera: str
    line: dict


@dataclass(frozen=True)
class Written:
    """A camera's snapshot or clip (``kind``) of ``event`` is on disk at ``path``."""

    camera: str
    kind: str
    event: str
    path: str


@dataclass(frozen=True)
class Score:
    """A camera's latest calibrated score (1.0: its event threshold), after each batch."""

    camera: str
    value: float


@dataclass(frozen=True)
class CameraAdded:
    camera: str


@dataclass(frozen=True)
class Batch:
    """A model worker scored ``frames`` frames of its cameras in ``seconds``."""

    model: str
    seconds: float
    frames: int


@dataclass(frozen=True)
class Verdict:
    """An operator's verdict on live event ``key`` (``CAMERA/EVENT``): the line recorded in the camera's run."""

    key: str
    line: dict


@dataclass(frozen=True)
class Storage:
    """What a retention sweep kept (:meth:`vad.site.retention.Kept.as_dict`)."""

    kept: dict


@dataclass(frozen=True)
class Stopping:
    """The site is stopping: streams end."""


SiteEvent = EventLine | StatusLine | Written | Score | CameraAdded | Batch | Verdict | Storage | Stopping
Subscriber = Callable[[SiteEvent], None]


def line_event(camera: str, line: dict) -> EventLine | StatusLine | None:
    """A camera's line as its event (None: a kind nobody subscribes to)."""
    kind = line.get("type")
    if kind in EVENT_LINES:
        return EventLine(camera, line)
    return StatusLine(camera, line) if kind == "status" else None


class Bus:
    """Events to subscribers, in the publisher's thread (a subscriber that must not block queues for itself)."""

    def __init__(self) -> None:
        self._subs: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Subscriber) -> None:
        with self._lock:
            self._subs = [*self._subs, fn]

    def publish(self, event: SiteEvent) -> None:
        for fn in self._subs:  # a snapshot: subscribing replaces the list
            fn(event)


class SiteView(Protocol):
    """What the HTTP app asks of a site (:class:`vad.site.reader.SiteReader`; a test's fake needs no camera)."""

    title: str

    def camera_names(self) -> list[str]: ...

    def healthy(self) -> bool:
        """While the loop runs and some camera is not down."""

    def camera_states(self) -> dict[str, dict]:
        """Per camera: state, source, model, rates, drops, latency, the open event, the last gap, its score."""

    def camera_history(self, name: str, seconds: int) -> list[tuple[int, float]]: ...

    def latest_seq(self, name: str) -> int | None:
        """The sequence number of the camera's latest scored frame (None: none yet, or no such camera)."""

    def picture(self, name: str) -> tuple[int, bytes] | None:
        """The latest scored frame as ``(seq, JPEG)``."""

    def event_lines(self, cameras: list[str], since: str | None) -> list[dict]:
        """Event and gap lines of ``cameras`` (each with its ``camera``) at or after ``since``, oldest first."""

    def feed(self, camera: str | None) -> list[dict]:
        """The events as the control room's items (:func:`vad.site.feed.feed_item`), oldest first."""

    def clips(self, camera: str) -> bool:
        """Whether the camera writes clips."""

    def media_root(self, camera: str) -> Path | None:
        """The camera's output folder (None: no such camera)."""

    def verdicts(self) -> tuple[dict[str, dict], list[str]]: ...

    def record_verdict(self, key: str, verdict: str, via: str) -> dict:
        """Record a verdict (the one write): :class:`~vad.errors.UnknownEventError`, ``UsageError``, ``InputError``
        (footage not written yet) or ``OSError``."""

    def storage(self) -> dict | None:
        """What retention keeps (None: not measured yet)."""

    def metrics_text(self) -> bytes: ...

    def subscribe(self, fn: Subscriber) -> None: ...
