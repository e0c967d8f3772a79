"""The control room's event items: one per event, folded from its lines (``/api/feed``) or sent as changes
(``/api/stream``)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote


def feed_item(camera: str, line: dict, clips: bool) -> dict | None:
    """An event line as a change of the event's item (the page merges them; :func:`fold` folds them); None for a
    line that is not about an event. ``clips``: whether the camera writes clips."""
    kind, event = line.get("type"), line.get("event")
    if kind not in ("start", "update", "end") or not isinstance(event, str):
        return None
    patch = {"id": f"{camera}/{event}", "camera": camera, "event": event, "peak": line.get("peak"),
             "branch": line.get("branch")}
    if line.get("snapshot"):
        patch["snapshot"] = f"/media/{quote(camera)}/snapshots/{quote(event)}.jpg"
    if kind == "start":
        patch.update(start_time=line.get("wall_time"), open=True, clip_ready=False)
        if clips:
            patch["clip"] = clip_url(camera, event)
    elif kind == "end":
        patch.update(end_time=line.get("wall_time"), open=False)
        patch["clip"] = clip_url(camera, event) if line.get("clip") else None
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


def clip_url(camera: str, event: str) -> str:
    return f"/media/{quote(camera)}/clips/{quote(event)}.mp4"
