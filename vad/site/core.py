"""The site's core without transport: what happens, one typed event per kind published on a :class:`Bus` (to MQTT,
the live feed, the metrics; none knows another), and what the HTTP app may ask, the :class:`SiteView` protocol."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from vad.live.eventlog import EVENT_LINES


@dataclass(frozen=True)
class EventLine:
    """A camera's ``start``, ``update``, ``end`` or ``gap`` line, as written to its events.jsonl."""

    camera: str
    line: dict
    clips: bool = True  # the camera keeps clips (its feed items name one): carried, so no subscriber asks the site


@dataclass(frozen=True)
class StatusLine:
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
    kept: dict  # what a retention sweep kept (vad.site.retention.Kept.as_dict)


@dataclass(frozen=True)
class Stopping:
    """The site is stopping: streams end."""


SiteEvent = EventLine | StatusLine | Written | Score | CameraAdded | Batch | Verdict | Storage | Stopping
Subscriber = Callable[[SiteEvent], None]


def line_event(camera: str, line: dict, clips: bool) -> EventLine | StatusLine | None:
    """A camera's line as its event (None: a kind nobody subscribes to); ``clips``: whether the camera keeps clips."""
    kind = line.get("type")
    if kind in EVENT_LINES:
        return EventLine(camera, line, clips)
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
        """While the loop runs and some camera is not down (a site with no camera is healthy)."""

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
        """The events as the control room's items (:func:`feed_item`), oldest first."""

    def clips(self, camera: str) -> bool: ...

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


def feed_item(camera: str, line: dict, clips: bool) -> dict | None:
    """An event line as a change of the event's control-room item (``/api/stream``; :func:`fold` merges them for
    ``/api/feed``); None for a line that is not about an event. ``clips``: whether the camera writes clips."""
    kind, event = line.get("type"), line.get("event")
    if kind not in ("start", "update", "end") or not isinstance(event, str):
        return None
    patch = {"id": f"{camera}/{event}", "camera": camera, "event": event, "peak": line.get("peak"),
             "branch": line.get("branch")}
    if line.get("snapshot"):
        patch["snapshot"] = f"/media/{quote(camera)}/snapshots/{quote(event)}.jpg"
    clip = f"/media/{quote(camera)}/clips/{quote(event)}.mp4"
    if kind == "start":
        patch.update(start_time=line.get("wall_time"), open=True, clip_ready=False)
        if clips:
            patch["clip"] = clip
    elif kind == "end":
        patch.update(end_time=line.get("wall_time"), open=False, clip=clip if line.get("clip") else None)
        if line.get("reason"):
            patch["reason"] = line["reason"]
    return patch


def fold(lines: list[dict], clips: Callable[[str], bool], clip_ready: Callable[[str, str], bool]) -> list[dict]:
    """The items of ``lines`` (each with its ``camera``), oldest first, the last 2000."""
    items: dict[str, dict] = {}
    for line in lines:
        patch = feed_item(line["camera"], line, clips(line["camera"]))
        if patch is not None:
            items.setdefault(patch["id"], {}).update(patch)
    for item in items.values():
        item["clip_ready"] = bool(item.get("clip")) and clip_ready(item["camera"], item["event"])
    return sorted(items.values(), key=lambda x: x.get("start_time") or x.get("end_time") or "")[-2000:]
