"""What a running site answers: :class:`SiteReader`, the :class:`~vad.site.core.SiteView` the HTTP app is built
from, over the site's camera table, its events files (:mod:`vad.live.eventlog`), verdicts, retention and metrics."""

from __future__ import annotations

import threading
from pathlib import Path

from vad.live.eventlog import event_log
from vad.runs import WatchFolder
from vad.site.cameras import CameraTable
from vad.site.core import Bus, Subscriber
from vad.site.feed import fold
from vad.site.metrics import SiteMetrics
from vad.site.retention import Retention
from vad.site.verdicts import SiteVerdicts


class SiteReader:
    """The site's answers (see :class:`~vad.site.core.SiteView` for each); ``stopped``: set once the site stops."""

    def __init__(self, title: str, out: Path, table: CameraTable, bus: Bus, verdicts: SiteVerdicts,
                 retention: Retention, metrics: SiteMetrics, stopped: threading.Event) -> None:
        self.title, self.out, self.table, self.bus = title, out, table, bus
        self._verdicts, self._retention, self._metrics, self._stopped = verdicts, retention, metrics, stopped

    def camera_names(self) -> list[str]:
        return self.table.names()

    def healthy(self) -> bool:
        """While the loop runs and some camera is not down (a site with no camera is healthy)."""
        cams = self.table.cameras()
        return not self._stopped.is_set() and (not cams or any(c.state != "down" for c in cams))

    def camera_states(self) -> dict[str, dict]:
        out = {}
        for name, (cfg, cam, worker) in self.table.items():
            s = cam.status_line()
            out[name] = {"state": cam.state, "source": cfg.source, "run": cfg.run, "model": worker.name,
                         "backend": worker.det.backend, "fps_in": s["fps_in"], "fps_scored": s["fps_scored"],
                         "frames_decoded": s["frames_decoded"], "frames_scored": s["frames_scored"],
                         "dropped": s["dropped"], "latency_ms_p50": s["latency_ms_p50"],
                         "latency_ms_p95": s["latency_ms_p95"], "open_event": s["open_event"],
                         "events": cam.events, "last_gap": cam.last_gap, "score": cam.last_score,
                         "frame_seq": None if cam.latest is None else cam.latest.frame.seq}
        return out

    def camera_history(self, name: str, seconds: int) -> list[tuple[int, float]]:
        entry = self.table.get(name)
        return [] if entry is None else entry.camera.recent_scores(seconds)

    def latest_seq(self, name: str) -> int | None:
        entry = self.table.get(name)
        latest = None if entry is None else entry.camera.latest
        return None if latest is None else latest.frame.seq

    def picture(self, name: str) -> tuple[int, bytes] | None:
        entry = self.table.get(name)
        return None if entry is None else entry.camera.picture()

    def event_lines(self, cameras: list[str], since: str | None) -> list[dict]:
        lines = [{**line, "camera": name} for name in cameras
                 for line in event_log(WatchFolder(self.out / name).events).lines(since)]
        return sorted(lines, key=lambda x: x.get("wall_time", ""))

    def feed(self, camera: str | None) -> list[dict]:
        names = self.table.names() if camera is None else [camera]
        return fold(self.event_lines(names, None), self.clips,
                    lambda cam, event: WatchFolder(self.out / cam).clip(event).is_file())

    def clips(self, camera: str) -> bool:
        entry = self.table.get(camera)
        return entry is not None and bool(entry.cfg.clips)

    def media_root(self, camera: str) -> Path | None:
        return self.out / camera if camera in self.table else None

    def verdicts(self) -> tuple[dict[str, dict], list[str]]:
        return self._verdicts.read()

    def record_verdict(self, key: str, verdict: str, via: str) -> dict:
        return self._verdicts.record(key, verdict, via)

    def storage(self) -> dict | None:
        kept = self._retention.kept
        return None if kept is None else kept.as_dict()

    def metrics_text(self) -> bytes:
        return self._metrics.text()

    def subscribe(self, fn: Subscriber) -> None:
        self.bus.subscribe(fn)
