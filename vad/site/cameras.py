"""The cameras a site runs, each with its configuration and its model worker: one table, read by the API, the
verdicts and retention while the site adds and removes cameras (reload)."""

from __future__ import annotations

import threading
from typing import NamedTuple

from vad.live.camera import Camera
from vad.site.config import CameraConfig
from vad.site.worker import ModelWorker


class Running(NamedTuple):
    cfg: CameraConfig
    camera: Camera
    worker: ModelWorker


class CameraTable:
    """``{name: Running}`` behind a lock; every read is a snapshot."""

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
