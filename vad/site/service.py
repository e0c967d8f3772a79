"""``vad serve``: every camera of a site watched by one process, the cameras of one run scored through one model.

.. code-block:: python

    from vad.site import Site

    site = Site.load("site.yaml")        # checked first: one error naming the file and the key
    site.run()                           # until stop() (SIGTERM, SIGINT); reload() re-reads the file (SIGHUP)

- **One model per run.** Cameras that name the same run (and scene) share one :class:`~vad.live.detector.Detector`:
  one loaded model, one runtime. Each camera keeps its own motion context (its stream's past in the scorer), its
  event rule state, its pre-roll ring buffer and its outputs (``out/<camera>/``: events.jsonl, snapshots/, clips/, as
  ``vad watch`` writes them): :class:`~vad.live.camera.Camera`.
- **Batches across cameras** (:class:`ModelWorker`, one thread per model): the frames waiting from all its cameras
  are scored in one batch, up to ``batch`` frames, or what is there ``batch_timeout_ms`` after the first one came.
  Frames are taken round-robin, one per camera and round, so a camera that floods cannot take another's place; a
  camera that sends faster than its ``fps`` is sampled by its source, and one that falls behind loses its own
  stalest frames (its queue). Each frame is scored with its own camera's past (:meth:`vad.runtime.scorer.Scorer.plan`):
  the
  scores are those ``vad watch`` gives the camera's frames alone. A camera's outage, refusal, garbage or size
  change is its own source's business (reopened with backoff, reported as a gap) and never stalls the others.
- **Lines** go to each camera's files and, with ``mqtt:``, to the broker (:mod:`vad.site.mqtt`); with ``http:``,
  the control room's page, the cameras, the events, verdicts, health and Prometheus metrics are served
  (:mod:`vad.site.http`), behind logins beyond loopback (:mod:`vad.site.auth`).
- **Retention**: events older than their camera's ``retain_days`` are deleted, and the evidence of all cameras is
  kept under ``max_gb`` (:mod:`vad.site.retention`).
- **Start-up in seconds**: models open with torch; exporting and measuring the runtimes happens in the background
  (:meth:`vad.live.detector.Detector.load`), and the sources open at once.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from vad.errors import VadError
from vad.live.camera import Camera
from vad.live.options import OPTION_NAMES
from vad.live.sources import End, Frame, Gap
from vad.live.watch import WatchOptions
from vad.site.config import CameraConfig, SiteConfig, load_site

log = logging.getLogger(__name__)


@dataclass
class _Member:
    """A camera in a model's worker, and what the worker still has to hand it after the batch."""

    camera: Camera
    pending: list  # gaps and ends taken after its frames in this round


class ModelWorker:
    """One shared model (a run, or one scene of it) and the thread that scores its cameras' frames together."""

    def __init__(self, key: tuple[str, str | None], detector, batch: int, timeout_ms: float, metrics=None) -> None:
        self.key, self.det, self.batch, self.timeout = key, detector, batch, timeout_ms / 1000
        self.metrics = metrics
        self.name = Path(key[0]).name + (f"/{key[1]}" if key[1] else "")
        self.members: dict[str, _Member] = {}
        self.wake = threading.Event()  # set by every member's source when it queues something
        self._lock = threading.Lock()  # members added and removed between batches
        self._stop = threading.Event()
        self._turn = 0  # round-robin: the member that goes first in the next round
        self.batches = self.frames = 0
        self.thread = threading.Thread(target=self._run, name=f"vad-model {self.name}", daemon=True)

    def add(self, camera: Camera) -> None:
        with self._lock:
            self.members[camera.name] = _Member(camera, [])
        self.wake.set()

    def remove(self, name: str) -> Camera | None:
        """Take camera ``name`` out (between batches); its stream's past is forgotten."""
        with self._lock:
            member = self.members.pop(name, None)
        self.det.reset(name)
        return member.camera if member else None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self.thread.join(timeout=30)
        self.det.close()

    # --- the loop ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self.wake.wait(0.2)
            self.wake.clear()
            with self._lock:
                members = list(self.members.values())
            if not members:
                continue
            taken = self._collect(members)
            try:
                self._score(taken, members)
            except Exception as err:  # a bug scoring one batch must not silence the site: say it, go on
                log.exception(f"error: scoring a batch of {self.name} failed ({type(err).__name__}: {err})")
            for m in members:  # gaps and ends, after the frames that came before them
                for item in m.pending:
                    self._stop_item(m.camera, item)
                m.pending.clear()

    def _collect(self, members: list[_Member]) -> list[tuple[Camera, Frame]]:
        """Up to ``batch`` frames, one per camera and round (round-robin), waiting at most ``batch_timeout`` after
        the first; a camera whose gap or end was taken gives no more frames to this batch."""
        taken: list[tuple[Camera, Frame]] = []
        deadline = None
        order = members[self._turn % len(members):] + members[: self._turn % len(members)]
        self._turn += 1
        while len(taken) < self.batch and not self._stop.is_set():
            got = False
            for m in order:
                if len(taken) >= self.batch:
                    break
                if m.pending:
                    continue
                frames, stops = m.camera.take(1)
                if frames:
                    taken.append((m.camera, frames[0]))
                    got = True
                if stops:
                    m.pending.extend(stops)
            if got:
                deadline = deadline or time.monotonic() + self.timeout
                continue
            now = time.monotonic()
            if deadline is None or now >= deadline:
                break
            self.wake.wait(deadline - now)
            self.wake.clear()
        return taken

    def _score(self, taken: list[tuple[Camera, Frame]], members: list[_Member]) -> None:
        if not taken:
            return
        t0 = time.perf_counter()
        out = self.det.score([f.rgb for _, f in taken], stream=[c.name for c, _ in taken],
                             first=[f.seq for _, f in taken])
        seconds = time.perf_counter() - t0
        self.batches += 1
        self.frames += len(taken)
        if self.metrics is not None:
            self.metrics.scoring(self.name, seconds, len(taken))
        rows: dict[str, list[int]] = {}
        for i, (c, _) in enumerate(taken):
            rows.setdefault(c.name, []).append(i)
        cameras = {m.camera.name: m.camera for m in members}
        for name, idx in rows.items():
            cam = cameras[name]
            try:
                cam.scored([taken[i][1] for i in idx], out.calibrated[idx], out.maps[idx],
                           None if out.branches is None else out.branches[idx])
            except Exception as err:  # one camera's sink or evidence failing leaves the others scoring
                log.exception(f"error: camera {name}: handling its scored frames failed ({type(err).__name__}: {err})")

    def _stop_item(self, cam: Camera, item: Gap | End) -> None:
        if isinstance(item, Gap):
            self.det.reset(cam.name)
            cam.gap(item)
        else:
            cam.ended(item)


class Site:
    """The cameras of a site file (:mod:`vad.site.config`) watched in this process (see the module docstring)."""

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.workers: dict[tuple[str, str | None], ModelWorker] = {}
        self.cameras: dict[str, tuple[CameraConfig, Camera, ModelWorker]] = {}
        self.publisher = None
        self.http = None
        self.metrics = None
        self.kept = None  # what the last retention sweep left (vad.site.retention.Kept)
        from vad.site.http import LiveFeed

        self.feed = LiveFeed(self)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._lock = threading.RLock()  # cameras added and removed (reload) vs. the API reading them

    @classmethod
    def load(cls, path: Path | str) -> Site:
        """The site of file ``path``, checked (nothing opens until :meth:`run`)."""
        return cls(load_site(path))

    # --- running ------------------------------------------------------------------------------------------------
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
        from vad.site.http import SiteMetrics, SiteServer

        self.metrics = SiteMetrics(self)
        if self.cfg.http is not None:  # first: a door that cannot be opened safely stops the start
            self.http = SiteServer(self, self.cfg.http)
        if self.cfg.mqtt is not None:
            from vad.site.mqtt import MqttPublisher

            self.publisher = MqttPublisher(self.cfg.mqtt)
            self.publisher.start()
        self._apply(self.cfg.cameras)
        if self.http is not None:
            self.http.start()
            users, tokens = self.http.users.names()
            who = (f"{len(users)} user(s), {len(tokens)} token(s) in {self.http.users.path}" if users or tokens
                   else "open: no login (loopback only)")
            log.info(f"http: {self.http.url} (the control room; /healthz, /api/..., /metrics); {who}")
        retention = threading.Thread(target=self._retention, name="vad-retention", daemon=True)
        retention.start()
        log.info(f"serving {len(self.cameras)} camera(s) with {len(self.workers)} model(s); "
                 f"{'SIGHUP re-reads ' + str(self.cfg.path) + '; ' if self.cfg.path else ''}Ctrl-C or SIGTERM stop")
        next_status = time.monotonic() + self.cfg.status_every
        terminal = sys.stderr.isatty()
        try:
            while not self._stop.wait(0.5):
                if self._reload.is_set():
                    self._reload.clear()
                    self._reload_safely()
                with self._lock:
                    cams = [c for _, c, _ in self.cameras.values()]
                for c in cams:
                    c.refresh_state()
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + self.cfg.status_every
                    for c in cams:
                        c.status()
                if terminal and cams:
                    sys.stderr.write("".join(f"\r\x1b[K{c.status_text()}\n" for c in cams) + f"\x1b[{len(cams)}A")
                    sys.stderr.flush()
        finally:
            if terminal:
                sys.stderr.write("\n" * len(self.cameras))
            self._shutdown()

    def stop(self) -> None:
        """Stop: every open event is closed, clips finished, ``offline`` published (from any thread)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the site file at the next turn of the loop (what SIGHUP does)."""
        self._reload.set()

    def _reload_safely(self) -> None:
        try:
            self.reload()
        except Exception:  # whatever the file holds or a bug applying it: never the service down
            log.exception(f"error: reloading {self.cfg.path} failed; the cameras running go on")

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

    # --- cameras ------------------------------------------------------------------------------------------------
    def _apply(self, wanted: dict[str, CameraConfig]) -> None:
        """Make the running cameras those of ``wanted``: remove the ones gone or changed, add the new or changed."""
        with self._lock:
            for name in [n for n, (cfg, _, _) in self.cameras.items() if wanted.get(n) != cfg]:
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
        feed = self.feed
        sinks = [lambda line, name=name: feed.line(name, line)]
        if self.publisher is not None:
            publisher = self.publisher
            sinks.append(lambda line, name=name: publisher.line(name, line))
            publisher.camera_added(name)
        options = _options(cfg, self.cfg, name)
        on_score = None if self.publisher is None else (lambda value, name=name: publisher.score(name, value))
        camera = Camera(name, cfg.source, worker.det.info, options, sinks=sinks, wake=worker.wake, on_score=on_score,
                        on_written=lambda kind, event, path, name=name: feed.written(name, kind, event, path))
        camera.start()
        worker.add(camera)
        self.cameras[name] = (cfg, camera, worker)
        log.info(f"camera {name}: {cfg.source} -> {options.out} (model {worker.name}, {worker.det.backend}; "
                 f"ring buffer {camera.tracker.recent.maxlen} frames, at most {camera.memory_bound():.0f} MiB of "
                 "frames at 1080p)")

    def _remove(self, name: str) -> None:
        cfg, camera, worker = self.cameras.pop(name)
        worker.remove(name)
        camera.close()
        log.info(f"camera {name}: stopped")

    def _worker(self, cfg: CameraConfig) -> ModelWorker:
        from vad.live.detector import Detector

        key = (cfg.run, cfg.scene)
        if key not in self.workers:
            log.info(f"loading the model of {cfg.run}" + (f" (scene {cfg.scene})" if cfg.scene else ""))
            det = Detector.load(cfg.run, device=self.cfg.device, backend=self.cfg.backend, scene=cfg.scene,
                                background=True)
            det.warm_up(self.cfg.batch)
            worker = ModelWorker(key, det, self.cfg.batch, self.cfg.batch_timeout_ms, self.metrics)
            worker.start()
            self.workers[key] = worker
        return self.workers[key]

    def _shutdown(self) -> None:
        log.info("stopping: closing open events, finishing clips")
        with self._lock:
            for c in [c for _, c, _ in self.cameras.values()]:
                c.stop_source()
            for w in self.workers.values():
                w.stop()
            for name in list(self.cameras):
                self._remove(name)
            self.workers.clear()
        if self.http is not None:
            self.feed.publish(None)
            self.http.stop()
        if self.publisher is not None:
            self.publisher.close()
        log.info("stopped")

    # --- what the API reads -----------------------------------------------------------------------------------
    def camera_states(self) -> dict[str, dict]:
        """Per camera: state, rates, drops, latency, the open event, the last gap."""
        with self._lock:
            items = list(self.cameras.items())
        out = {}
        for name, (cfg, cam, worker) in items:
            s = cam.status_line()
            out[name] = {"state": cam.state, "source": cfg.source, "run": cfg.run, "model": worker.name,
                         "backend": worker.det.backend, "fps_in": s["fps_in"], "fps_scored": s["fps_scored"],
                         "frames_decoded": s["frames_decoded"], "frames_scored": s["frames_scored"],
                         "dropped": s["dropped"], "latency_ms_p50": s["latency_ms_p50"],
                         "latency_ms_p95": s["latency_ms_p95"], "open_event": s["open_event"],
                         "events": cam.events, "last_gap": cam.last_gap, "score": cam.last_score,
                         "frame_seq": None if cam.latest is None else cam.latest.frame.seq}
        return out

    def camera(self, name: str) -> Camera | None:
        with self._lock:
            entry = self.cameras.get(name)
        return entry[1] if entry else None

    def camera_history(self, name: str, seconds: int) -> list[tuple[int, float]]:
        cam = self.camera(name)
        return [] if cam is None else cam.recent_scores(seconds)

    # --- verdicts and retention ---------------------------------------------------------------------------------
    def _runs(self) -> dict[str, list[str]]:
        """``{run folder: the cameras it scores}``."""
        with self._lock:
            items = [(name, cfg.run) for name, (cfg, _, _) in self.cameras.items()]
        runs: dict[str, list[str]] = {}
        for name, run in items:
            runs.setdefault(run, []).append(name)
        return runs

    def verdicts(self) -> tuple[dict[str, dict], list[str]]:
        """The verdicts on this site's live events (``{CAMERA/EVENT: line}``), from each camera's run, and the lines
        that are not verdicts (``FILE:LINE``)."""
        from vad.review.verdicts import read_verdicts

        verdicts, bad = {}, []
        for run, names in self._runs().items():
            given, skipped = read_verdicts(run)
            verdicts.update({k: v for k, v in given.items() if k.partition("/")[0] in names and "/" in k})
            bad += [f"{Path(run) / 'feedback.jsonl'}:{n}" for n in skipped]
        return verdicts, bad

    def record_verdict(self, key: str, verdict: str, via: str = "site") -> dict:
        """Record an operator's verdict on live event ``key`` (``CAMERA/EVENT``) into the camera's run
        (:func:`vad.review.verdicts.record_live_verdict`), and tell the pages."""
        from vad.errors import UnknownEventError
        from vad.review.verdicts import record_live_verdict
        from vad.runs import RunFolder, WatchFolder

        camera, _, event = key.partition("/")
        with self._lock:
            entry = self.cameras.get(camera)
        if entry is None:
            raise UnknownEventError(f"unknown camera {camera!r} in {key!r}; cameras: {', '.join(sorted(self.cameras))}")
        folder = WatchFolder(self.cfg.out / camera)
        if not _has_event(folder.events, event):
            raise UnknownEventError(f"unknown event {event!r} of camera {camera} (not in {folder.events})")
        line = record_live_verdict(RunFolder(entry[0].run), camera, event, verdict, folder.footage(event), via)
        log.info(f"verdict: {key} {verdict} ({via}) -> {entry[0].run}/feedback.jsonl")
        self.feed.verdict(key, line)
        return line

    def sweep(self) -> None:
        """One retention sweep (:mod:`vad.site.retention`): what is kept goes to :attr:`kept`."""
        from vad.site.retention import sweep

        judged = set(self.verdicts()[0])
        with self._lock:
            items = list(self.cameras.items())
        cameras = {}
        for name, (cfg, cam, _) in items:
            busy = cam.evidence.busy() | ({cam.tracker.open.id} if cam.tracker.open else set())
            cameras[name] = {"retain_days": cfg.retain_days, "busy": busy, "camera": cam,
                             "judged": {k.partition("/")[2] for k in judged if k.partition("/")[0] == name}}
        self.kept = sweep(self.cfg.out, cameras, self.cfg.max_gb * 1e9)

    def _retention(self) -> None:
        from vad.site.retention import EVERY

        while True:
            try:
                self.sweep()
            except Exception as err:  # retention failing must not stop the site; say it, try again later
                log.exception(f"error: retention sweep failed ({type(err).__name__}: {err})")
            if self._stop.wait(EVERY):
                return

    def healthy(self) -> bool:
        """While the loop runs and some camera is not down (a site with no camera is healthy)."""
        if self._stop.is_set():
            return False
        with self._lock:
            cams = [c for _, c, _ in self.cameras.values()]
        return not cams or any(c.state != "down" for c in cams)


def _has_event(path: Path, event: str) -> bool:
    """Whether a line of ``events.jsonl`` at ``path`` names ``event``."""
    import json

    if not path.is_file():
        return False
    needle = json.dumps(event)
    for text in path.read_text().splitlines():
        if needle in text:
            try:
                if json.loads(text).get("event") == event:
                    return True
            except ValueError:
                continue
    return False


def _options(cam: CameraConfig, site: SiteConfig, name: str) -> WatchOptions:
    """A camera's :class:`vad.live.watch.WatchOptions`: its options (:class:`vad.live.options.CameraOptions`, the
    fields a camera's keys and ``vad watch``'s flags share) and the site's."""
    own = {k: getattr(cam, k) for k in OPTION_NAMES}
    return WatchOptions(**own, out=site.out / name, batch=site.batch, status_every=site.status_every,
                        progress=False, source_name=name)
