"""The scorer: a trained model run on frames of one or more streams -> per-frame scores, anomaly maps, branch scores.

It composes what runs the model (:attr:`Scorer.runner`, :mod:`vad.runtime.runner`) and each stream's kept past
(:attr:`Scorer.pasts`, :mod:`vad.runtime.pasts`); whole clips are batched and written by :mod:`vad.runtime.batches`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch

from vad.config import ScoreConfig
from vad.device import resolve_device, to_device
from vad.io.dataset import NORMALIZATIONS, FrameTransform
from vad.models import AnomalyModel, frame_scores, speed_cue
from vad.models.speed import SpeedStreams
from vad.runtime.pasts import Pasts, frame_streams
from vad.runtime.runner import Runner

_TIMING_CLIP = "\0speed"  # the clip name frames_per_second scores under (no real clip has a NUL in its name)


class Scorer:
    """Wraps a trained model for inference: ``scorer(x, clip, first) -> (scores (B,), maps (B, h, w), branches)`` for
    normalised frames ``x`` ``(B, 3, H, W)``; ``branches``: a fused model's standardised frame score per branch
    ``(B, len(model.branches))``, else ``None``.

    A model with a past (``model.context``: the motion branch) scores a stream of single frames with the teacher
    run once per frame, its past kept per clip by :attr:`pasts` (``first``: the index of ``x[0]`` in clip ``clip``).
    The scores equal those of the model's windows (``(B, 3 * window, H, W)``,
    :meth:`~vad.models.base.AnomalyModel.score_and_map`). A model with a speed cue (:mod:`vad.models.speed`) has its
    map fused with the cue's here, after the network, whatever runs it; the cue's previous frame is kept per stream
    by the same rules. :attr:`runner` runs the network: torch, or an exported copy (:mod:`vad.runtime.export`).
    """

    def __init__(self, model: AnomalyModel, ckpt: dict, cfg: ScoreConfig, device: str | torch.device = "auto",
                 runtime=None) -> None:
        self.device = resolve_device(device)
        self.cfg = cfg
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.transform = FrameTransform(size=tuple(ckpt["input_size"]), normalization=ckpt["normalization"])
        self.per_position = cfg.per_position and model.has_position_stats
        cue = speed_cue(model)  # the speed cue runs here, beside whatever runs the network
        self.speeds = None if cue is None else SpeedStreams(cue, *NORMALIZATIONS[self.transform.normalization])
        self.on_device = self.device.type == "cuda"  # decode JPEGs, resize and normalise on the GPU
        self.runner = Runner(self.model, cfg, self.device)
        self.pasts = Pasts(self.model, self.device, self.speeds)
        self.use(runtime)

    def use(self, runtime) -> None:
        """Run the model with ``runtime`` (an exported copy: :class:`vad.runtime.export.Runtime`) from now on;
        ``None``: with torch again. Every stream's past starts afresh."""
        self.runner.use(runtime)
        self.pasts.reset(self.runner.dtype)

    def switch(self, runtime) -> None:
        """:meth:`use` ``runtime`` from the next call on, keeping each stream's past (in float32: a runtime's
        precision)."""
        carried = self.pasts.carried()
        self.use(runtime)
        self.pasts.restore(carried)

    def frames_per_second(self, x: torch.Tensor, repeat: int = 3) -> float:
        """Frames/s of this scorer on the batch ``x`` of normalised frames, as a clip's first batch: a warm-up call
        (which also tunes the memory layout), then the median of ``repeat`` timed calls."""
        times = []
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            self(x, _TIMING_CLIP, 0)
            times.append(time.perf_counter() - t0)
        self.pasts.forget(_TIMING_CLIP)
        return len(x) / statistics.median(times[1:])

    @torch.no_grad()  # not inference_mode: MKD's maps need input gradients, which it enables itself
    def __call__(self, x: torch.Tensor, clip: str | Sequence[str] = "", first: int | Sequence[int] = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Normalised frames ``(B, 3, H, W)`` -> (scores ``(B,)``, anomaly maps ``(B, h, w)``, branch scores or
        ``None``), float32 (a model with a past: frames ``first ..`` of clip ``clip``, see the class docstring; or
        frames of several streams in one batch, ``clip`` and ``first`` then one stream name and frame index per
        frame (:meth:`vad.runtime.pasts.Pasts.plan`); windows ``(B, 3 * window, H, W)`` are scored as they are). With
        ``score.per_position`` the map is standardised per position and the score is its maximum."""
        x = to_device(x, self.device)
        n = len(x)
        grey = None if self.speeds is None else self.speeds.grey(x[:, -3:])
        if grey is not None and x.shape[1] > 3:  # windows: the frame before the scored one is the past
            clip, first = [f"\0window{j}" for j in range(n)], [1] * n
            for j, before in enumerate(self.speeds.grey(x[:, -6:-3])):
                if not np.array_equal(before, grey[j]):  # a clip's first window repeats its frame: no past
                    self.speeds.remember(before[None], clip[j], 0)
        plan = self.pasts.plan(clip, first, x) if self.model.context and x.shape[1] == 3 else None
        speed = None
        if grey is not None:  # the speed cue's flow runs on its own thread while the network runs
            size = (x.shape[-2] // self.model.stride, x.shape[-1] // self.model.stride)
            speed = self.speeds.submit(grey, *frame_streams(clip, first, n), size)
        try:
            out = self.runner.run(x, plan)
        finally:
            relative = None if speed is None else speed.result()
        branches = None
        if len(out) == 4:
            scores, amap, branches, feats = out
            self.pasts.remember(plan, feats)
            branches = branches[:n].float()
        else:
            scores, amap = out
        scores, amap = scores[:n].float(), amap[:n].float()
        if relative is not None:
            amap, branches = self._with_speed(amap, branches, relative)
            scores = frame_scores(amap)
            for name in clip if x.shape[1] > 3 else ():
                self.speeds.forget(name)
        if self.per_position:
            amap = self.model.standardise_map(amap)
            scores = frame_scores(amap)
        return scores, amap, branches

    def speed_maps(self, grey: np.ndarray, clip: str | Sequence[str], first: int | Sequence[int],
                   size: tuple[int, int]) -> torch.Tensor:
        """The speed cue's raw maps ``(B, *size)`` of grey frames (see :meth:`__call__` for ``clip`` and ``first``),
        each stream reading its own previous frame."""
        speeds = self.speeds.cell_speeds(grey, *frame_streams(clip, first, len(grey)), size)
        return self.speeds.cue.relative(torch.from_numpy(speeds))

    def _with_speed(self, amap: torch.Tensor, branches: torch.Tensor | None, relative: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's map fused with the speed cue's raw map ``relative``, and the branch scores with the cue's (a
        model of one map: its own standardised score first, as "appearance")."""
        cue = self.speeds.cue
        fused, speed = cue.fuse(amap, relative.to(amap.device))
        if branches is None:
            branches = ((frame_scores(amap) - cue.loc[0].to(amap.device)) / cue.scale[0].to(amap.device))[:, None]
        return fused, torch.cat([branches, speed[:, None].to(branches.device)], 1)
