"""A site's lines on MQTT (paho-mqtt; topics under ``topic_prefix``, docs/site.md): ``events`` (every event and gap
line, QoS 1), ``<camera>/anomaly`` (``ON`` while an event is open, retained), ``<camera>/score`` (at most once a
second, QoS 0), ``stats`` (status lines), ``available`` (``online``; ``offline`` on stop and as the last will).

Publishing never blocks scoring: messages go into a bounded buffer (the oldest dropped beyond ``buffer``, counted in
:attr:`MqttPublisher.dropped`), and one thread sends them in order, a QoS 1 message leaving the buffer only once the
broker has acknowledged it. A broker that is down or goes away is retried with backoff (1 s to 30 s); what was
buffered meanwhile is sent on reconnect, in order.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque

from vad.live.eventlog import EVENT_LINES
from vad.site.config import MqttConfig
from vad.site.core import CameraAdded, EventLine, Score, SiteEvent, StatusLine

log = logging.getLogger(__name__)


class MqttPublisher:
    """One connection for the whole site."""

    def __init__(self, cfg: MqttConfig, score_every: float = 1.0) -> None:
        import paho.mqtt.client as mqtt

        self.cfg, self.prefix, self.score_every = cfg, cfg.topic_prefix.rstrip("/"), score_every
        self.buffer: deque = deque()
        self.dropped = self.sent = 0
        self.connected = threading.Event()
        self._lock = threading.Condition()
        self._last_score: dict[str, float] = {}
        self._stopping = False
        client_id = cfg.client_id or f"vad-{socket.gethostname()}-{os.getpid()}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password)
        self.client.will_set(self.topic("available"), "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.thread = threading.Thread(target=self._send_all, name="vad-mqtt", daemon=True)

    def topic(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    def start(self) -> None:
        """Connect in the background (a broker that is not there yet is retried) and start sending."""
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()
        self.thread.start()

    def __call__(self, event: SiteEvent) -> None:
        """A subscriber of the site's bus (:mod:`vad.site.core`): lines, scores and cameras added."""
        if isinstance(event, EventLine | StatusLine):
            self.line(event.camera, event.line)
        elif isinstance(event, Score):
            self.score(event.camera, event.value)
        elif isinstance(event, CameraAdded):
            self._put(self.topic(event.camera, "anomaly"), "OFF", 1, True)

    def line(self, camera: str, line: dict) -> None:
        """A camera's line to its topics: events and gaps to ``events``, status to ``stats``, ``<camera>/anomaly``."""
        kind = line.get("type")
        body = json.dumps({**line, "camera": camera})
        if kind in EVENT_LINES:
            self._put(self.topic("events"), body, 1, False)
            if kind in ("start", "end"):
                self._put(self.topic(camera, "anomaly"), "ON" if kind == "start" else "OFF", 1, True)
        elif kind == "status":
            self._put(self.topic("stats"), body, 0, False)

    def score(self, camera: str, calibrated: float, now: float | None = None) -> None:
        """A camera's latest calibrated score: published at most once per ``score_every`` seconds."""
        now = time.monotonic() if now is None else now
        if now - self._last_score.get(camera, -1e9) >= self.score_every:
            self._last_score[camera] = now
            self._put(self.topic(camera, "score"), f"{calibrated:.4f}", 0, False)

    def close(self, timeout: float = 5.0) -> None:
        """Publish ``offline``, send what is buffered (for up to ``timeout`` seconds), disconnect."""
        self._put(self.topic("available"), "offline", 1, True)
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.buffer and self.connected.is_set() and time.monotonic() < deadline:
                self._lock.wait(0.05)
            self._stopping = True
            self._lock.notify_all()
        self.thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self.client.disconnect()
        self.client.loop_stop()

    def state(self) -> dict:
        return {"connected": self.connected.is_set(), "buffered": len(self.buffer), "dropped": self.dropped,
                "sent": self.sent}

    def _put(self, topic: str, payload: str, qos: int, retain: bool) -> None:
        with self._lock:
            if len(self.buffer) >= self.cfg.buffer:
                self.buffer.popleft()
                self.dropped += 1
            self.buffer.append((topic, payload, qos, retain))
            self._lock.notify_all()

    def _on_connect(self, client, userdata, flags, reason, properties=None) -> None:
        if reason.is_failure:
            log.warning(f"note: MQTT broker {self.cfg.host}:{self.cfg.port} refused the connection ({reason}); "
                        "retrying")
            return
        log.info(f"MQTT: connected to {self.cfg.host}:{self.cfg.port} (topics under {self.prefix}/)")
        # first on the connection, ahead of the buffer: the will's 'offline' is replaced at once
        client.publish(self.topic("available"), "online", qos=1, retain=True)
        self.connected.set()
        with self._lock:
            self._lock.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason, properties=None) -> None:
        if self.connected.is_set() and not self._stopping:
            log.warning(f"note: MQTT broker {self.cfg.host}:{self.cfg.port} went away ({reason}); buffering (at most "
                        f"{self.cfg.buffer} messages) and reconnecting")
        self.connected.clear()

    def _send_all(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and (not self.buffer or not self.connected.is_set()):
                    self._lock.wait(0.5)
                if self._stopping and (not self.buffer or not self.connected.is_set()):
                    return
                topic, payload, qos, retain = self.buffer[0]
            if self._publish(topic, payload, qos, retain):
                with self._lock:
                    if self.buffer and self.buffer[0] == (topic, payload, qos, retain):
                        self.buffer.popleft()
                    self.sent += 1
                    self._lock.notify_all()
            else:
                time.sleep(0.2)  # not connected after all: wait for the reconnect

    def _publish(self, topic: str, payload: str, qos: int, retain: bool) -> bool:
        """Send one message; a QoS 1 one counts as sent once the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != 0:
            return False
        if qos == 0:
            return True
        try:
            info.wait_for_publish(timeout=5.0)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()
