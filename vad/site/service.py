"""``vad serve``: every camera of a site watched by one process (:class:`Site`), the cameras of one run scored
through one model.

.. code-block:: python

    site = Site.load("site.yaml")        # checked first: one error naming the file and the key
    site.run()                           # until stop() (SIGTERM, SIGINT); reload() re-reads the file (SIGHUP)

Cameras that name the same run (and scene) share one detector and one :class:`~vad.site.worker.ModelWorker`
(batches across cameras); each keeps its own motion context, event state, pre-roll, outputs (``out/<camera>/``, as
``vad watch`` writes them) and outages (a gap; the others go on). Models open with torch and are exported and
measured in the background, so the sources open at once.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from vad.errors import VadError
from vad.live.camera import Camera
from vad.live.detector import Detector
from vad.live.options import OPTION_NAMES
from vad.live.watch import WatchOptions
from vad.site.config import CameraConfig, SiteConfig, load_site
from vad.site.core import Bus, CameraAdded, Score, Stopping, Written, line_event
from vad.site.http import SiteServer
from vad.site.mqtt import MqttPublisher
from vad.site.reader import SiteMetrics, SiteReader
from vad.site.retention import Retention
from vad.site.worker import CameraTable, ModelWorker, Running

log = logging.getLogger(__name__)


class Site:
    """The cameras of a site file (:mod:`vad.site.config`) watched in this process: its lifecycle, reload, cameras
    and model workers. What happens goes on :attr:`bus` (:mod:`vad.site.core`); what the API asks, :attr:`reader`
    answers."""

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.workers: dict[tuple[str, str | None], ModelWorker] = {}
        self.cameras = CameraTable()
        self.bus = Bus()
        self.publisher: MqttPublisher | None = None
        self.http: SiteServer | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.retention = Retention(self.cameras, cfg.out, cfg.max_gb * 1e9, lambda: set(self.reader.verdicts()[0]),
                                   self.bus.publish)
        self.metrics = SiteMetrics(lambda: self.reader.camera_states(),
                                   lambda: None if self.publisher is None else self.publisher.state())
        self.bus.subscribe(self.metrics)
        self.reader = SiteReader(cfg.path.stem if cfg.path else "site", cfg.out, self.cameras, self.bus,
                                 self.retention, self.metrics, self._stop)

    @classmethod
    def load(cls, path: Path | str) -> Site:
        """The site of file ``path``, checked (nothing opens until :meth:`run`)."""
        return cls(load_site(path))

    def run(self, handle_signals: bool | None = None) -> None:
        """Open every camera and serve until :meth:`stop`. ``handle_signals`` (default: in the main thread): SIGTERM
        and SIGINT stop, SIGHUP reloads the site file."""
        if handle_signals is None:
            handle_signals = threading.current_thread() is threading.main_thread()
        if handle_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
            if hasattr(signal, "SIGHUP"):
                signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        if self.cfg.http is not None:  # first: a door that cannot be opened safely stops the start
            self.http = SiteServer(self.reader, self.cfg.http)
        if self.cfg.mqtt is not None:
            self.publisher = MqttPublisher(self.cfg.mqtt)
            self.bus.subscribe(self.publisher)
            self.publisher.start()
        self._apply(self.cfg.cameras)
        if self.http is not None:
            self.http.start()
        self.retention.start(self._stop)
        log.info(f"serving {len(self.cameras)} camera(s) with {len(self.workers)} model(s); "
                 f"{'SIGHUP re-reads ' + str(self.cfg.path) + '; ' if self.cfg.path else ''}Ctrl-C or SIGTERM stop")
        board = StatusBoard(self.cfg.status_every)
        try:
            while not self._stop.wait(0.5):
                if self._reload.is_set():
                    self._reload.clear()
                    try:
                        self.reload()
                    except Exception:  # whatever the file holds or a bug applying it: never the service down
                        log.exception(f"error: reloading {self.cfg.path} failed; the cameras running go on")
                board.turn(self.cameras.cameras())
        finally:
            board.close(len(self.cameras))
            self._shutdown()

    def stop(self) -> None:
        """Stop: every open event is closed, clips finished, ``offline`` published (from any thread)."""
        self._stop.set()

    def reload(self) -> bool:
        """Re-read the site file: cameras added, removed or changed (those only: the others go on untouched). A
        file that no longer checks changes nothing and says why. Returns whether it applied."""
        if self.cfg.path is None:
            return False
        try:
            new = load_site(self.cfg.path)
        except VadError as err:
            log.error(f"error: {err}; the site goes on as it was")
            return False
        for key in ("mqtt", "http", "batch", "batch_timeout_ms", "device", "backend", "out"):
            if getattr(new, key) != getattr(self.cfg, key):
                log.warning(f"note: {self.cfg.path}: {key} changed; it applies when vad serve restarts")
        self._apply(new.cameras)
        self.cfg = replace(self.cfg, cameras=new.cameras)
        log.info(f"reloaded {self.cfg.path}: {len(self.cameras)} camera(s)")
        return True

    def camera(self, name: str) -> Camera | None:
        entry = self.cameras.get(name)
        return entry.camera if entry else None

    def _apply(self, wanted: dict[str, CameraConfig]) -> None:
        """Make the running cameras those of ``wanted``: remove the ones gone or changed, add the new or changed."""
        with self.cameras.lock:
            for name in [n for n, r in self.cameras.items() if wanted.get(n) != r.cfg]:
                self._remove(name)
            for name, cfg in wanted.items():
                if name not in self.cameras:
                    try:
                        self._add(name, cfg)
                    except (VadError, OSError) as err:  # this camera's model cannot be opened: the others go on
                        log.error(f"error: camera {name}: {err}")
            for key in [k for k, w in self.workers.items() if not w.members]:
                self.workers.pop(key).stop()

    def _add(self, name: str, cfg: CameraConfig) -> None:
        worker = self._worker(cfg)
        publish = self.bus.publish
        publish(CameraAdded(name))

        def sink(line: dict) -> None:
            event = line_event(name, line, cfg.clips)
            if event is not None:
                publish(event)

        options = _options(cfg, self.cfg, name)
        camera = Camera(name, cfg.source, worker.det.info, options, sinks=[sink], wake=worker.wake,
                        on_score=lambda value: publish(Score(name, value)),
                        on_written=lambda kind, event, path: publish(Written(name, kind, event, path)))
        camera.start()
        worker.add(camera)
        self.cameras.put(name, Running(cfg, camera, worker))
        log.info(f"camera {name}: {cfg.source} -> {options.out} (model {worker.name}, {worker.det.backend}; "
                 f"ring buffer {camera.tracker.recent.maxlen} frames, at most {camera.memory_bound():.0f} MiB of "
                 "frames at 1080p)")

    def _remove(self, name: str) -> None:
        _, camera, worker = self.cameras.pop(name)
        worker.remove(name)
        camera.close()
        log.info(f"camera {name}: stopped")

    def _worker(self, cfg: CameraConfig) -> ModelWorker:
        key = (cfg.run, cfg.scene)
        if key not in self.workers:
            log.info(f"loading the model of {cfg.run}" + (f" (scene {cfg.scene})" if cfg.scene else ""))
            det = Detector.load(cfg.run, device=self.cfg.device, backend=self.cfg.backend, scene=cfg.scene,
                                background=True)
            det.warm_up(self.cfg.batch)
            worker = ModelWorker(key, det, self.cfg.batch, self.cfg.batch_timeout_ms, self.bus.publish)
            worker.thread.start()
            self.workers[key] = worker
        return self.workers[key]

    def _shutdown(self) -> None:
        log.info("stopping: closing open events, finishing clips")
        with self.cameras.lock:
            for c in self.cameras.cameras():
                c.stop_source()
            for w in self.workers.values():
                w.stop()
            for name in self.cameras.names():
                self._remove(name)
            self.workers.clear()
        self.bus.publish(Stopping())
        if self.http is not None:
            self.http.stop()
        if self.publisher is not None:
            self.publisher.close()
        log.info("stopped")


class StatusBoard:
    """The site loop's turn for its cameras: states refreshed, ``status`` lines every ``every`` seconds, and on a
    terminal one line per camera redrawn in place."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.terminal = sys.stderr.isatty()
        self.next = time.monotonic() + every

    def turn(self, cams: list[Camera]) -> None:
        for c in cams:
            c.refresh_state()
        if time.monotonic() >= self.next:
            self.next = time.monotonic() + self.every
            for c in cams:
                c.status()
        if self.terminal and cams:
            sys.stderr.write("".join(f"\r\x1b[K{c.status_text()}\n" for c in cams) + f"\x1b[{len(cams)}A")
            sys.stderr.flush()

    def close(self, cameras: int) -> None:
        """Leave the cursor below the ``cameras`` lines drawn."""
        if self.terminal:
            sys.stderr.write("\n" * cameras)


def _options(cam: CameraConfig, site: SiteConfig, name: str) -> WatchOptions:
    """A camera's :class:`vad.live.watch.WatchOptions`: its options (those of ``vad watch``'s flags) and the site's."""
    own = {k: getattr(cam, k) for k in OPTION_NAMES}
    return WatchOptions(**own, out=site.out / name, batch=site.batch, status_every=site.status_every,
                        progress=False, source_name=name)
