"""What a running site answers: :class:`SiteReader`, the :class:`~vad.site.core.SiteView` the HTTP app is built
from (the camera table, the events files, verdicts, retention), and :class:`SiteMetrics`, its Prometheus registry."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vad.errors import UnknownEventError
from vad.live.eventlog import event_log
from vad.review.verdicts import read_verdicts, record_live_verdict
from vad.runs import RunFolder, WatchFolder
from vad.site.core import Batch, Bus, SiteEvent, Subscriber, Verdict, fold
from vad.site.retention import Retention
from vad.site.worker import CameraTable

log = logging.getLogger(__name__)


class SiteReader:
    """The site's answers (see :class:`~vad.site.core.SiteView` for each); ``stopped``: set once the site stops."""

    def __init__(self, title: str, out: Path, table: CameraTable, bus: Bus, retention: Retention,
                 metrics: SiteMetrics, stopped: threading.Event) -> None:
        self.title, self.out, self.table, self.bus = title, out, table, bus
        self._retention, self._metrics, self._stopped = retention, metrics, stopped

    def camera_names(self) -> list[str]:
        return self.table.names()

    def healthy(self) -> bool:
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
                         "frame_seq": None if cam.tile.latest is None else cam.tile.latest.frame.seq}
        return out

    def camera_history(self, name: str, seconds: int) -> list[tuple[int, float]]:
        entry = self.table.get(name)
        return [] if entry is None else entry.camera.tile.recent(seconds)

    def latest_seq(self, name: str) -> int | None:
        entry = self.table.get(name)
        latest = None if entry is None else entry.camera.tile.latest
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
        """The verdicts on this site's live events (``{CAMERA/EVENT: line}``), from each camera's run, and the lines
        that are not verdicts (``FILE:LINE``)."""
        verdicts, bad = {}, []
        for run, names in self.table.runs().items():
            given, skipped = read_verdicts(run)
            verdicts.update({k: v for k, v in given.items() if k.partition("/")[0] in names and "/" in k})
            bad += [f"{Path(run) / 'feedback.jsonl'}:{n}" for n in skipped]
        return verdicts, bad

    def record_verdict(self, key: str, verdict: str, via: str = "site") -> dict:
        """Record an operator's verdict on live event ``key`` (``CAMERA/EVENT``) into the camera's run
        (:func:`vad.review.verdicts.record_live_verdict`), and publish it (:class:`~vad.site.core.Verdict`)."""
        camera, _, event = key.partition("/")
        entry = self.table.get(camera)
        if entry is None:
            raise UnknownEventError(f"unknown camera {camera!r} in {key!r}; cameras: "
                                    f"{', '.join(sorted(self.table.names()))}")
        folder = WatchFolder(self.out / camera)
        if not event_log(folder.events).has(event):
            raise UnknownEventError(f"unknown event {event!r} of camera {camera} (not in {folder.events})")
        line = record_live_verdict(RunFolder(entry.cfg.run), camera, event, verdict, folder.footage(event), via)
        log.info(f"verdict: {key} {verdict} ({via}) -> {entry.cfg.run}/feedback.jsonl")
        self.bus.publish(Verdict(key, line))
        return line

    def storage(self) -> dict | None:
        kept = self._retention.kept
        return None if kept is None else kept.as_dict()

    def metrics_text(self) -> bytes:
        return generate_latest(self._metrics.registry)

    def subscribe(self, fn: Subscriber) -> None:
        self.bus.subscribe(fn)


class SiteMetrics:
    """A subscriber observing the model workers' batches (``vad_scoring_seconds``, ``vad_batch_frames``), and a
    collector reading at each scrape the cameras' counts (``states``: :meth:`SiteReader.camera_states`;
    ``vad_camera_*``, ``vad_frames_*``, ``vad_events_total``: exact, and gone when the camera goes) and the MQTT
    publisher's state (``mqtt``; None: no MQTT; ``vad_mqtt_*``)."""

    def __init__(self, states: Callable[[], dict[str, dict]], mqtt: Callable[[], dict | None]) -> None:
        self.states, self.mqtt = states, mqtt
        self.registry = CollectorRegistry(auto_describe=True)
        self.scoring_seconds = Histogram("vad_scoring_seconds", "Seconds to score one batch", ["model"],
                                         buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
                                         registry=self.registry)
        self.batch_frames = Histogram("vad_batch_frames", "Frames per scored batch", ["model"],
                                      buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.registry.register(self)

    def __call__(self, event: SiteEvent) -> None:
        if isinstance(event, Batch):
            self.scoring_seconds.labels(model=event.model).observe(event.seconds)
            self.batch_frames.labels(model=event.model).observe(event.frames)

    def describe(self) -> list:
        return []

    def collect(self):
        fps = GaugeMetricFamily("vad_camera_fps", "Frames scored per second, recent", labels=["camera"])
        fps_in = GaugeMetricFamily("vad_camera_input_fps", "Frames received per second, recent", labels=["camera"])
        up = GaugeMetricFamily("vad_camera_up", "1 while the camera is not down", labels=["camera"])
        scored = CounterMetricFamily("vad_frames_scored", "Frames scored", labels=["camera"])
        dropped = CounterMetricFamily("vad_frames_dropped", "Frames dropped (scoring behind)", labels=["camera"])
        events = CounterMetricFamily("vad_events", "Events started", labels=["camera"])
        for name, s in self.states().items():
            fps.add_metric([name], s["fps_scored"])
            fps_in.add_metric([name], s["fps_in"])
            up.add_metric([name], 0.0 if s["state"] in ("down", "stopped") else 1.0)
            scored.add_metric([name], s["frames_scored"])
            dropped.add_metric([name], s["dropped"])
            events.add_metric([name], s["events"])
        yield from (fps, fps_in, up, scored, dropped, events)
        st = self.mqtt()
        if st is not None:
            mqtt_dropped = CounterMetricFamily("vad_mqtt_dropped", "MQTT messages dropped (buffer full)")
            mqtt_dropped.add_metric([], st["dropped"])
            connected = GaugeMetricFamily("vad_mqtt_connected", "1 while connected to the broker")
            connected.add_metric([], 1.0 if st["connected"] else 0.0)
            yield from (mqtt_dropped, connected)
