"""The site's Prometheus registry (prometheus_client): the cameras' counts and the MQTT connection read at each
scrape, the model workers' batches observed as they happen (a subscriber of :class:`~vad.site.core.Batch`)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vad.site.core import Batch, SiteEvent


class SiteMetrics:
    """``vad_camera_*``, ``vad_frames_*``, ``vad_events_total``, ``vad_scoring_seconds``, ``vad_batch_frames``,
    ``vad_mqtt_*``; ``states`` gives :meth:`vad.site.core.SiteView.camera_states`, ``mqtt`` the publisher's state
    (None: no MQTT)."""

    def __init__(self, states: Callable[[], dict[str, dict]], mqtt: Callable[[], dict | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.scoring_seconds = Histogram("vad_scoring_seconds", "Seconds to score one batch", ["model"],
                                         buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
                                         registry=self.registry)
        self.batch_frames = Histogram("vad_batch_frames", "Frames per scored batch", ["model"],
                                      buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.registry.register(_Cameras(states, mqtt))

    def __call__(self, event: SiteEvent) -> None:
        if isinstance(event, Batch):
            self.scoring_seconds.labels(model=event.model).observe(event.seconds)
            self.batch_frames.labels(model=event.model).observe(event.frames)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Cameras:
    """A collector reading every camera's counts at scrape time (exact, and gone when the camera goes)."""

    def __init__(self, states: Callable[[], dict[str, dict]], mqtt: Callable[[], dict | None]) -> None:
        self.states, self.mqtt = states, mqtt

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
