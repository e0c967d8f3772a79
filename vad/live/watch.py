"""Watching a live source (``vad watch``, :meth:`vad.live.detector.Detector.watch`): frames scored as they arrive,
events raised by the causal rule, evidence kept.

A :class:`~vad.live.sources.Source` thread decodes the source into a bounded queue (the stalest frames dropped when
scoring falls behind; outages reported as gaps, never scored); the loop takes every frame waiting (up to ``batch``),
scores them (the same scores as ``vad score`` gives the same frames) and hands them to its camera
(:class:`~vad.live.camera.Camera`), whose event tracker applies the live rule
(:class:`~vad.runtime.postprocess.CausalRule`) and writes every change as one JSON line
(:data:`~vad.live.events.LINE_FIELDS`) to every sink (:mod:`vad.live.sinks`): ``start``, ``update`` at most once a
second, ``end``, ``gap``, ``status`` every ``status_every`` seconds. Evidence (:mod:`vad.live.evidence`: each
event's peak snapshot, an annotated clip with pre- and post-roll) is written off the loop. No sink blocks the loop:
evidence and webhook work queue up to a bound and are dropped (and counted) beyond it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vad.live.camera import Camera
from vad.live.options import CameraOptions, option
from vad.live.sources import Frame, Gap, describe_source


@dataclass(frozen=True)
class WatchOptions(CameraOptions):
    """How to watch a source: a camera's options (:class:`~vad.live.options.CameraOptions`) and the watch loop's
    own (:func:`~vad.live.options.option`)."""

    # None: no files; vad watch requires it (its own --out argument, hence no flag from here)
    out: Path | None = option(None, "output folder: events.jsonl, snapshots/, clips/", cli=False)
    batch: int = option(8, "frames scored together at most (whatever waits, up to this)", cli=False)
    status_every: float = option(10.0, "seconds between status lines (default 10)")
    update_every: float = option(1.0, "seconds between update lines of an open event, at least", cli=False)
    stdout: bool = option(False, "write every line to stdout too (JSON lines)")
    webhook: str | None = option(None, "POST every line (JSON) to this URL (retried; never stops scoring)")
    max_frames: int | None = option(None, "stop after scoring this many frames")
    max_seconds: float | None = option(None, "stop after this many seconds")
    progress: bool = option(True, "a status line on a terminal (stderr)", cli=False)
    source_name: str | None = option(None, "how lines name the source (default: the source string)", cli=False)
    sinks: list[Callable[[dict], None]] = field(default_factory=list, metadata={
        "help": "more sinks: callables taking every line (a dict) after the file, stdout and webhook; close() is "
                "called at the end when they have it (vad.live.sinks)", "cli": False})


class Watch:
    """One source watched with one detector: a :class:`~vad.live.camera.Camera` whose frames the loop scores
    alone (many cameras through shared models: :class:`vad.site.Site`)."""

    def __init__(self, detector, source: str, options: WatchOptions) -> None:  # a vad.live.detector.Detector
        self.det, self.source, self.o = detector, str(source), options
        self.name = options.source_name or self.source
        self.camera = Camera(self.name, self.source, detector.info, options)
        self.folder, self.fps = self.camera.folder, self.camera.fps
        self._stop = threading.Event()

    def stop(self) -> None:
        """Stop after the frames being scored (an open event is closed and its clip finished): SIGINT, SIGTERM."""
        self._stop.set()
        self.camera.stop_source()

    def banner(self) -> str:
        det, cam = self.det, self.camera
        rate = (f"the training footage's {det.fps:g} fps" if det.fps and not self.o.fps else
                f"{self.o.fps:g} fps (--fps; the model learned motion at {det.fps or 'an unknown rate'} fps: speeds "
                "look different to its motion branch)" if self.o.fps else "the source's own rate (the model's "
                "training rate is unknown)")
        h, w = det.input_size
        ring = cam.tracker.recent.maxlen
        return (f"watching {self.name} ({describe_source(self.source)}) with {det.run.root} ({det.backend}, input "
                f"{w}x{h}); frames sampled to {rate}; events at calibrated 1.0 (the "
                f"{det.cfg.eval.threshold_percentile:g}th percentile of normal hold-out scores); pre-roll ring buffer "
                f"{ring} frames (at most {ring * 3 * 1920 * 1080 / 2**20:.0f} MB at 1080p); queue {self.o.queue_size} "
                "frames" + (f" -> {self.folder.events}" if self.folder else ""))

    def run(self) -> Iterator[dict]:
        """Watch until the source ends, ``stop()``, or ``max_frames`` / ``max_seconds``; yield every line written."""
        self.det.warm_up(self.o.batch)
        cam = self.camera
        t0 = time.monotonic()
        terminal = self.o.progress and sys.stderr.isatty()
        cam.start()
        next_status = t0 + self.o.status_every
        try:
            while not self._stop.is_set():
                frames, stops = cam.take(self.o.batch, timeout=0.2)
                if frames:
                    yield from self._score(frames)
                for item in stops:
                    if isinstance(item, Gap):
                        self.det.reset(self.name)
                        yield from cam.gap(item)
                    else:
                        yield from cam.ended(item)
                        self._stop.set()
                now = time.monotonic()
                if now >= next_status:
                    yield from cam.status()
                    next_status = now + self.o.status_every
                if terminal:
                    sys.stderr.write(f"\r{cam.status_text()}")
                    sys.stderr.flush()
                if (self.o.max_frames and cam.stats.scored >= self.o.max_frames) or (
                        self.o.max_seconds and now - t0 >= self.o.max_seconds):
                    self._stop.set()
        finally:
            cam.stopping = True
            yield from cam.close()
            if terminal:
                sys.stderr.write("\n")
                sys.stderr.flush()

    def _score(self, frames: list[Frame]) -> Iterator[dict]:
        """Score ``frames`` (runs of consecutive ones together: after a drop, the scorer sees the jump in seq and
        starts the stream's past afresh) and hand them back to the camera; yield the lines written."""
        for run in _consecutive(frames):
            out = self.det.score([f.rgb for f in run], stream=self.name, first=run[0].seq)
            yield from self.camera.scored(run, out.calibrated, out.maps, out.branches)


def _consecutive(frames: list[Frame]) -> list[list[Frame]]:
    """``frames`` split into runs of consecutive ``seq``."""
    runs, run = [], [frames[0]]
    for f in frames[1:]:
        if f.seq == run[-1].seq + 1:
            run.append(f)
        else:
            runs.append(run)
            run = [f]
    runs.append(run)
    return runs
