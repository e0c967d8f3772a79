"""The Python API beside the CLI: a trained run's model, loaded once, scoring frames as they come.

    from vad.live.detector import Detector

    det = Detector.load("runs/campus")                 # the run's model, settings and normal reference
    out = det.score(frames)                            # consecutive uint8 (H, W, 3) frames of one stream
    out.calibrated                                     # 0 at the median normal score, 1.0 at the event threshold
    for line in det.watch("rtsp://camera/stream", out="watch/"):   # events as they happen (vad.live.watch)
        handle(line)                                    # your alarm, log or queue

Frames of one ``stream`` are consecutive: a motion model reads each frame's past from the frames scored before it
(the teacher once per frame); :meth:`Detector.reset` (a gap in the stream) starts its past afresh, as a clip's first
frame. Scores equal ``vad score``'s for the same frames (tests/test_live.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vad.config import RunConfig
from vad.errors import UsageError
from vad.live.camera import ModelInfo
from vad.live.watch import Watch, WatchOptions
from vad.models import scored_branches
from vad.policy import run_config
from vad.runs import RunFolder, locked
from vad.runtime.export import VARIANTS
from vad.runtime.open import open_model, variant_reference
from vad.runtime.prepare import prepare_backend, prepare_model
from vad.runtime.reference import NormalReference

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """What :meth:`Detector.score` gives per frame, as numpy arrays on the host."""

    scores: np.ndarray  # (B,) raw frame scores (the model's units)
    calibrated: np.ndarray  # (B,) 0 at the median normal hold-out score, 1.0 at the event threshold
    maps: np.ndarray  # (B, h, w) raw anomaly maps, one value per `stride` input pixels
    branches: np.ndarray | None  # (B, k) standardised frame score per branch of a fused model, else None


class Detector:
    """A trained run's model with its scoring settings, normal reference and event threshold (:meth:`load`)."""

    def __init__(self, run: RunFolder, cfg: RunConfig, scorer, ckpt: dict, reference: NormalReference,
                 reference_name: str, backend: str) -> None:
        self.run, self.cfg, self.scorer, self.ckpt = run, cfg, scorer, ckpt
        self.reference, self.reference_name, self.backend = reference, reference_name, backend
        self.threshold = reference.threshold(cfg.eval.threshold_percentile)
        self.median = float(np.median(reference.scores))
        self._next: dict[str, int] = {}
        self._using = threading.Lock()  # held while scoring and while switching what runs the model
        self.preparing: threading.Thread | None = None  # the backend made ready in the background (load's background)
        self._children: list = []  # its process
        self._closing = False

    @classmethod
    def load(cls, run: Path | str, *, device: str = "auto", backend: str | None = None,
             overrides: Sequence[str] = (), scene: str | None = None, cfg: RunConfig | None = None,
             background: bool = False) -> Detector:
        """The model of run folder ``run`` (``scene``: one scene's) under the run's config with ``overrides``
        (``cfg``: that config already loaded), run by ``backend`` (default ``score.backend``): prepared, then opened.
        ``background``: exporting and measuring (tens of seconds on 2 cores) run in a child process while torch
        scores; the detector switches when it is ready, the streams' pasts kept."""
        folder = RunFolder(run)
        if cfg is None:
            cfg = run_config(folder.root, overrides, "watch")
        if backend is not None:
            cfg = replace(cfg, score=replace(cfg.score, backend=backend))
        with locked(folder.root, "watch (loading the model)", wait=120):  # other watchers load it too: a moment
            if background:  # the normal reference now; the backend's exports and speeds in the child
                prepare_model(folder, cfg, device, scope=scene, backend="torch")
                opened = open_model(folder, cfg, device, scope=scene, backend=backend, defer=True)
            else:
                opened = prepare_model(folder, cfg, device, scope=scene, backend=backend)
        det = cls(folder, cfg, opened.scorer, opened.ckpt, opened.reference, opened.reference_name, opened.backend)
        if opened.pending:
            det.preparing = threading.Thread(target=det._prepare_backend, args=(opened, device), name="vad-backend",
                                             daemon=True)
            det.preparing.start()
        return det

    def _prepare_backend(self, opened, device: str) -> None:
        """Export and measure in a child process (:func:`vad.runtime.prepare.prepare_backend`), then switch to the
        backend chosen between two batches."""
        try:
            backend, runtime = prepare_backend(opened, self.cfg, device, started=self._children.append)
        except Exception as err:  # scoring goes on with torch; say why
            if not self._closing:
                log.warning(f"note: {self.run.root}: preparing {opened.pending} failed ({type(err).__name__}: "
                            f"{err}); scoring with torch")
            return
        if backend != "torch":
            with self._using:
                self.scorer.switch(runtime)
                self.backend = backend
                if backend in VARIANTS:  # a lower-precision copy scores against its own reference
                    name, ref = variant_reference(self.run, opened.export_name, backend, self.scorer)
                    self.reference, self.reference_name = ref, name
                    self.threshold = ref.threshold(self.cfg.eval.threshold_percentile)
                    self.median = float(np.median(ref.scores))
        log.info(f"{self.run.root}: scoring with {backend} from now on")

    def close(self) -> None:
        """End a preparation still under way (its child process): what it wrote so far is temporary files only."""
        self._closing = True
        for child in self._children:
            if child.is_alive():
                child.terminate()
                child.join(timeout=10)
        if self.preparing is not None:
            self.preparing.join(timeout=10)

    @property
    def info(self):
        """What a camera needs to know of this model (:class:`vad.live.camera.ModelInfo`)."""
        return ModelInfo(self.cfg, self.reference, self.fps, tuple(self.branches or ()))

    @property
    def fps(self) -> float | None:
        """The frame rate of the training footage: the rate the motion branch learned how things move at."""
        return self.ckpt.get("fps")

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.ckpt["input_size"])

    @property
    def stride(self) -> int:
        """Input pixels per cell of the maps :meth:`score` returns."""
        return self.scorer.model.stride

    @property
    def branches(self) -> tuple[str, ...]:
        return scored_branches(self.scorer.model)

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        """Raw scores -> 0 at the median normal hold-out score, 1.0 at the event threshold."""
        return (np.asarray(scores, dtype=np.float64) - self.median) / (self.threshold - self.median)

    def score(self, frames: Sequence[np.ndarray] | np.ndarray, stream: str | Sequence[str] = "default",
              first: int | Sequence[int] | None = None) -> Scored:
        """Score consecutive frames of ``stream``: uint8 RGB ``(H, W, 3)`` each (sizes may change between frames).
        ``first``: the stream index of ``frames[0]`` (default: right after the last frame scored; one that does not
        follow it starts the stream's past afresh). Frames of several streams (cameras) in one batch: ``stream`` and
        ``first`` name each frame's, scored as if its stream were scored alone."""
        if len(frames) == 0:
            raise UsageError("no frames to score")
        if isinstance(stream, str):
            first = self._next.get(stream, 0) if first is None else first
            streams, firsts = [stream] * len(frames), list(range(first, first + len(frames)))
        else:
            streams, firsts = list(stream), list(first)
            if len(streams) != len(frames) or len(firsts) != len(frames):
                raise UsageError(f"{len(frames)} frames with {len(streams)} stream names and {len(firsts)} indices")
        x = self._prepare(frames)
        with self._using:
            scores, maps, branches = self.scorer(x, streams, firsts)
        for s, f in zip(streams, firsts, strict=True):
            self._next[s] = f + 1
        scores = scores.numpy()
        return Scored(scores, self.calibrate(scores), maps.numpy(), None if branches is None else branches.numpy())

    def warm_up(self, batch: int) -> None:
        """Score a few blank frames (a batch of ``batch``, then one) before a source opens: a runtime's first calls
        allocate and are slow, and the first frames of a stream should not wait for that."""
        h, w = self.input_size
        for n in (batch, 1):
            self.score([np.zeros((h, w, 3), np.uint8)] * n, stream="warm-up", first=0)
        self.reset("warm-up")

    def reset(self, stream: str = "default") -> None:
        """Forget ``stream``'s past (after a gap its next frame starts afresh, as a clip's first frame)."""
        self.scorer.pasts.forget(stream)
        self._next.pop(stream, None)

    def _prepare(self, frames: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """uint8 frames -> normalised ``(B, 3, h, w)`` at the model's input size; frames of several sizes are resized
        in groups of one size (as a stream that changes resolution sends them)."""
        parts, group = [], []
        for f in frames:
            f = np.asarray(f)
            if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
                raise UsageError(f"frames must be uint8 RGB (H, W, 3); got {f.dtype} {f.shape}")
            if group and f.shape != group[0].shape:
                parts.append(self._transform(group))
                group = []
            group.append(f)
        parts.append(self._transform(group))
        return torch.cat(parts)

    def _transform(self, group: list[np.ndarray]) -> torch.Tensor:
        return self.scorer.transform(torch.from_numpy(np.stack(group)).permute(0, 3, 1, 2))

    def watch(self, source: str, out: Path | str | None = None, **options) -> Iterator[dict]:
        """Watch ``source`` (:mod:`vad.live.sources`) and yield every event, gap and status line as it is written to
        ``out/events.jsonl`` (:class:`vad.live.watch.Watch`; ``options``: :class:`~vad.live.watch.WatchOptions`)."""
        yield from Watch(self, source, WatchOptions(out=Path(out) if out else None, **options)).run()
