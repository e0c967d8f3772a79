"""How long a site keeps its events: ``retain_days`` per camera, ``max_gb`` for all of them (:func:`sweep`).

Every ``EVERY`` seconds (and when ``vad serve`` starts) each camera's folder is swept:

1. **Age.** An event whose newest file (snapshot, clip, footage) is older than the camera's ``retain_days`` loses
   its files, and the lines of ``events.jsonl`` written before that time go too (events, gaps, status).
2. **Size.** While the files of all cameras take more than ``max_gb`` (default 20), events lose their files, the
   oldest first, those with an operator's verdict last (their footage is in the run already: a verdict copies it
   there, and the site never deletes a run's files). Their lines stay (a few hundred bytes each) until their age.

An event still open, or whose clip is still being written, is never touched; temporary files (``.vad-tmp.*``: clips
being written) count in the bound, and one untouched for ``STALE`` s (an hour) is a leftover of a killed watch,
deleted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from vad.atomic import TEMP_PREFIX
from vad.live.eventlog import event_log
from vad.runs import WatchFolder
from vad.site.core import Storage
from vad.site.worker import CameraTable

log = logging.getLogger(__name__)

EVERY = 60.0  # seconds between sweeps
KINDS = ("snapshots", "clips", "footage")
STALE = 3600.0  # seconds a temporary file (a clip being written) goes untouched before it is a leftover


@dataclass
class Kept:
    """What a sweep left: ``{camera: {"bytes", "events", "oldest" (unix time or None)}}`` and the bound."""

    cameras: dict[str, dict] = field(default_factory=dict)
    max_bytes: float = 0.0
    retain_days: dict[str, float] = field(default_factory=dict)
    deleted_events: int = 0  # events whose files this sweep deleted

    @property
    def bytes(self) -> int:
        return sum(c["bytes"] for c in self.cameras.values())

    def text(self) -> str:
        days = sorted(set(self.retain_days.values()))
        span = f"{days[0]:g}" if len(days) == 1 else f"{days[0]:g}-{days[-1]:g}"
        events = sum(c["events"] for c in self.cameras.values())
        return (f"{self.bytes / 1e9:.2f} GB of {self.max_bytes / 1e9:g} GB in {events} events' evidence; events are "
                f"kept {span} days, the oldest deleted first beyond {self.max_bytes / 1e9:g} GB")

    def as_dict(self) -> dict:
        return {"bytes": self.bytes, "max_bytes": self.max_bytes, "cameras": self.cameras,
                "retain_days": self.retain_days, "text": self.text()}


def _event_files(folder: WatchFolder) -> tuple[dict[str, list[Path]], list[Path]]:
    """``{event id: its files}`` under a camera's folder (snapshot, clip, footage and its note), and the temporary
    files there (being written, or left by a watch that was killed)."""
    files: dict[str, list[Path]] = {}
    temporary = []
    for kind in KINDS:
        d = folder.root / kind
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.is_file() and p.name.startswith(TEMP_PREFIX):
                temporary.append(p)
            elif p.is_file() and not p.name.startswith("."):
                files.setdefault(p.stem, []).append(p)
    return files, temporary


def _temporary_bytes(files: list[Path], now: float) -> int:
    """Bytes of the temporary files being written; one untouched for ``STALE`` s is a leftover, deleted."""
    size = 0
    for p in files:
        try:
            st = p.stat()
        except FileNotFoundError:  # finished meanwhile
            continue
        if st.st_mtime < now - STALE:
            p.unlink(missing_ok=True)
            log.info(f"retention: {p} deleted (a temporary file untouched for {STALE / 3600:g} h: left by a watch "
                     "that was stopped)")
        else:
            size += st.st_size
    return size


def sweep(out: Path, cameras: dict[str, dict], max_bytes: float, now: float | None = None) -> Kept:
    """Apply the rules of the module docstring to ``out/<camera>/`` for each of ``cameras``: ``{name: {"retain_days":
    float, "busy": set of event ids not to touch, "judged": set of event ids with a verdict, "camera": the
    :class:`~vad.live.camera.Camera` or None (its events.jsonl is rewritten between its writes)}}``."""
    now = time.time() if now is None else now
    kept = Kept(max_bytes=max_bytes, retain_days={n: c["retain_days"] for n, c in cameras.items()})
    entries = []  # (judged, time, bytes, camera, event, files)
    busy = 0  # bytes of the events being written: counted in the bound, never deleted
    for name, c in cameras.items():
        folder = WatchFolder(Path(out) / name)
        cutoff = now - c["retain_days"] * 86400
        events, temporary = _event_files(folder)
        busy += _temporary_bytes(temporary, now)
        for event, files in events.items():
            stats = [(p, p.stat()) for p in files if p.exists()]
            if event in c["busy"]:
                busy += sum(st.st_size for _, st in stats)
                continue
            newest = max((st.st_mtime for _, st in stats), default=now)
            if newest < cutoff:
                for p, _ in stats:
                    p.unlink(missing_ok=True)
                kept.deleted_events += 1
                continue
            entries.append((event in c["judged"], newest, sum(st.st_size for _, st in stats), name, event,
                            [p for p, _ in stats]))
        _drop_lines(folder, cutoff, c.get("camera"))
    total = sum(e[2] for e in entries) + busy
    for _, _, size, name, event, files in sorted(entries, key=lambda e: (e[0], e[1])):
        if total <= max_bytes:
            break
        for p in files:
            p.unlink(missing_ok=True)
        total -= size
        kept.deleted_events += 1
        entries = [e for e in entries if not (e[3] == name and e[4] == event)]
        log.info(f"retention: camera {name}: event {event} deleted (evidence over {max_bytes / 1e9:g} GB)")
    for name in cameras:
        mine = [e for e in entries if e[3] == name]
        kept.cameras[name] = {"bytes": sum(e[2] for e in mine), "events": len(mine),
                              "oldest": min((e[1] for e in mine), default=None)}
    return kept


def _drop_lines(folder: WatchFolder, cutoff: float, camera) -> int:
    """The lines of ``events.jsonl`` written before ``cutoff`` (unix time), removed."""
    if not folder.events.is_file():
        return 0
    cutoff_iso = datetime.fromtimestamp(cutoff, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")

    def keep(line: dict) -> bool:
        t = line.get("wall_time")
        return not isinstance(t, str) or t[:19] >= cutoff_iso

    if camera is not None:
        return camera.rewrite_events(keep)
    return event_log(folder.events).rewrite(keep)


class Retention:
    """A running site's sweeps: one every ``EVERY`` seconds in a thread of its own (:meth:`start`), of the cameras in
    ``table``; each sweep's :class:`Kept` is :attr:`kept` and is published (:class:`~vad.site.core.Storage`)."""

    def __init__(self, table: CameraTable, out: Path, max_bytes: float, judged: Callable[[], set[str]],
                 publish: Callable[[Storage], None]) -> None:
        self.table, self.out, self.max_bytes, self.judged, self.publish = table, out, max_bytes, judged, publish
        self.kept: Kept | None = None  # what the last sweep left

    def sweep(self) -> None:
        """One sweep: the open events and the clips being written are busy, the events with a verdict judged."""
        judged = self.judged()
        cameras = {}
        for name, (cfg, cam, _) in self.table.items():
            busy = cam.evidence.busy() | ({cam.tracker.open.id} if cam.tracker.open else set())
            cameras[name] = {"retain_days": cfg.retain_days, "busy": busy, "camera": cam,
                             "judged": {k.partition("/")[2] for k in judged if k.partition("/")[0] == name}}
        self.kept = sweep(self.out, cameras, self.max_bytes)
        self.publish(Storage(self.kept.as_dict()))

    def start(self, stop: threading.Event) -> None:
        """Sweep now and every ``EVERY`` seconds until ``stop`` is set."""
        threading.Thread(target=self._run, args=(stop,), name="vad-retention", daemon=True).start()

    def _run(self, stop: threading.Event) -> None:
        while True:
            try:
                self.sweep()
            except Exception as err:  # retention failing must not stop the site; say it, try again later
                log.exception(f"error: retention sweep failed ({type(err).__name__}: {err})")
            if stop.wait(EVERY):
                return
