"""The cameras a site runs (:class:`CameraTable`) and their model workers (:class:`ModelWorker`): one thread per
shared model scoring the frames waiting from all its cameras in one batch, taken round-robin (a camera that floods
cannot take another's place), each frame with its own camera's past (:meth:`vad.runtime.scorer.Pasts.plan`: the
scores ``vad watch`` gives the camera alone)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from vad.live.camera import Camera
from vad.live.sources import End, Frame, Gap
from vad.site.config import CameraConfig
from vad.site.core import Batch

log = logging.getLogger(__name__)


@dataclass
class _Member:
    """A camera in a model's worker, and what the worker still has to hand it after the batch."""

    camera: Camera
    pending: list  # gaps and ends taken after its frames in this round


class ModelWorker:
    """One shared model (a run, or one scene of it) and the thread that scores its cameras' frames together."""

    def __init__(self, key: tuple[str, str | None], detector, batch: int, timeout_ms: float,
                 publish: Callable[[Batch], None] | None = None) -> None:
        self.key, self.det, self.batch, self.timeout = key, detector, batch, timeout_ms / 1000
        self.publish = publish  # each batch's time and size (the metrics)
        self.name = Path(key[0]).name + (f"/{key[1]}" if key[1] else "")
        self.members: dict[str, _Member] = {}
        self.wake = threading.Event()  # set by every member's source when it queues something
        self._lock = threading.Lock()  # members added and removed between batches
        self._stop = threading.Event()
        self._turn = 0  # round-robin: the member that goes first in the next round
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

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self.thread.join(timeout=30)
        self.det.close()

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
        if self.publish is not None:
            self.publish(Batch(self.name, seconds, len(taken)))
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


class Running(NamedTuple):
    cfg: CameraConfig
    camera: Camera
    worker: ModelWorker


class CameraTable:
    """``{name: Running}`` behind a lock, read by the API and retention while the site reloads; every read is a
    snapshot."""

    def __init__(self) -> None:
        self._items: dict[str, Running] = {}
        self.lock = threading.RLock()  # held by the site across a reload's removals and additions

    def __contains__(self, name: str) -> bool:
        with self.lock:
            return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str) -> Running | None:
        with self.lock:
            return self._items.get(name)

    def items(self) -> list[tuple[str, Running]]:
        with self.lock:
            return list(self._items.items())

    def names(self) -> list[str]:
        with self.lock:
            return list(self._items)

    def cameras(self) -> list[Camera]:
        with self.lock:
            return [r.camera for r in self._items.values()]

    def runs(self) -> dict[str, list[str]]:
        """``{run folder: the cameras it scores}``."""
        runs: dict[str, list[str]] = {}
        for name, r in self.items():
            runs.setdefault(r.cfg.run, []).append(name)
        return runs

    def put(self, name: str, running: Running) -> None:
        with self.lock:
            self._items[name] = running

    def pop(self, name: str) -> Running:
        with self.lock:
            return self._items.pop(name)
