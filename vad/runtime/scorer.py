"""The scorer: a trained model run on frames of one or more streams -> per-frame scores, anomaly maps, branch scores.

:class:`Scorer` composes what runs the model (:class:`Runner`: torch, eager or ``torch.compile``-d in the faster
memory layout, or an exported runtime, :class:`vad.runtime.export.Runtime`) and each stream's kept past
(:class:`Pasts`); whole clips are batched and written by :mod:`vad.runtime.batches`.

A stream (a clip, a camera) is scored in consecutive frames. For a model that reads a past (``model.context``: the
motion branch) a stream's first frame, or a frame that does not follow the last one kept (a gap), starts afresh: its
past is itself, as a window's. The speed cue keeps each stream's previous grey frame by the same rules
(:class:`vad.models.speed.SpeedStreams`).
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from vad.config import ScoreConfig
from vad.device import amp_dtype, autocast, resolve_device, to_device
from vad.errors import ConfigError
from vad.io.dataset import NORMALIZATIONS, FrameTransform
from vad.models import AnomalyModel, frame_scores, speed_cue
from vad.models.speed import SpeedStreams


def frame_streams(clip: str | Sequence[str], first: int | Sequence[int], n: int) -> tuple[list[str], list[int]]:
    """Per frame of a batch of ``n``: its stream and its index there (one stream's frames ``first ..``, or a name
    and an index per frame); an error when the names or indices are not one per frame."""
    streams = [clip] * n if isinstance(clip, str) else list(clip)
    firsts = list(range(first, first + n)) if isinstance(first, int) else [int(f) for f in first]
    if len(streams) != n or len(firsts) != n:
        raise ValueError(f"{n} frames with {len(streams)} stream names and {len(firsts)} frame indices")
    return streams, firsts


@dataclass
class PastPlan:
    """Where the frames of one batch find their past (:meth:`Pasts.plan`): ``pool`` the kept features read
    ``{level: (P, C, h, w)}``, ``index`` ``(B, context)`` rows of ``cat(pool, the batch's features)``, ``keep`` per
    stream the rows that are its last ``context`` frames after the batch and the index of its next frame."""

    pool: dict[str, torch.Tensor]
    index: torch.Tensor
    keep: dict[str, tuple[list[int], int]]


class Pasts:
    """The kept pasts of the streams ``model`` scores on ``device`` (``speeds``: the speed cue's, or None)."""

    def __init__(self, model: AnomalyModel, device: torch.device, speeds: SpeedStreams | None) -> None:
        self.model, self.device, self.speeds = model, device, speeds
        self.dtype: torch.dtype | None = None  # the autocast precision the model's features are computed in
        self.kept: dict[str, tuple[dict[str, torch.Tensor], int]] = {}  # stream -> (its last frames' features, next)
        self._zeros: dict[str, torch.Tensor] | None = None

    def reset(self, dtype: torch.dtype | None) -> None:
        """Forget every stream's past (what runs the model changed: features of another precision)."""
        self.dtype, self.kept, self._zeros = dtype, {}, None
        if self.speeds is not None:
            self.speeds.forget()

    def carried(self) -> tuple[dict, dict]:
        """Every stream's past (features in float32: a runtime's precision) and previous grey frame, to be
        :meth:`restore`-d after a :meth:`reset`."""
        past = {s: ({k: v.float() for k, v in feats.items()}, nxt) for s, (feats, nxt) in self.kept.items()}
        return past, {} if self.speeds is None else dict(self.speeds._last)

    def restore(self, carried: tuple[dict, dict]) -> None:
        self.kept, frames = carried
        if self.speeds is not None:
            self.speeds._last.update(frames)

    def plan(self, clip: str | Sequence[str], first: int | Sequence[int], x: torch.Tensor) -> PastPlan:
        """Where each frame of ``x`` finds its past (:meth:`vad.models.motion.MotionSTPM.step`): frames
        ``first ..`` of one stream ``clip``, or per frame its stream and frame index (frames of several cameras
        in one batch). A stream's consecutive frames form a run; a run that follows the last frames kept of its
        stream reads their features (the pool), any other starts afresh, as a clip's first frame."""
        n, k = len(x), self.model.context
        streams, firsts = frame_streams(clip, first, n)
        runs: list[dict] = []
        last: dict[str, dict] = {}
        pool: list[dict[str, torch.Tensor]] = []
        for j, (s, f) in enumerate(zip(streams, firsts, strict=True)):
            run = last.get(s)
            if run is not None and run["next"] == f:
                run["rows"].append(j)
                run["next"] += 1
                continue
            kept = self.kept.get(s) if run is None else None  # a jump inside the batch starts afresh
            offset = None
            if kept is not None and kept[1] == f:
                offset = k * len(pool)
                pool.append(kept[0])
            run = {"stream": s, "rows": [j], "next": f + 1, "offset": offset}
            last[s] = run
            runs.append(run)
        if not pool:  # one block of zeros: the graph always has a pool to read from
            pool.append(self._zero_past(x))
        size = k * len(pool)

        def row(run: dict, p: int) -> int:  # the p-th element of the run's sequence: its past, then its frames
            if p < k:
                return run["offset"] + p if run["offset"] is not None else size + run["rows"][0]
            return size + run["rows"][p - k]

        index = [[0] * k for _ in range(n)]
        for run in runs:
            for m, j in enumerate(run["rows"]):
                index[j] = [row(run, m + i) for i in range(k)]
        keep = {s: ([row(r, len(r["rows"]) + i) for i in range(k)], r["next"]) for s, r in last.items()}
        merged = {name: torch.cat([p[name] for p in pool]) for name in pool[0]}
        return PastPlan(merged, torch.tensor(index, dtype=torch.long, device=self.device), keep)

    def _zero_past(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._zeros is None:
            with autocast(self.device, self.dtype):
                one = self.model.past_features(x[:1])
            self._zeros = {k: v.new_zeros((self.model.context, *v.shape[1:])) for k, v in one.items()}
        return self._zeros

    def remember(self, plan: PastPlan, feats: dict[str, torch.Tensor]) -> None:
        """Keep, per stream of ``plan``, the features of its last ``context`` frames (``feats``: of the batch's)."""
        for stream, (rows, nxt) in plan.keep.items():
            index = torch.tensor(rows, dtype=torch.long, device=self.device)
            kept = {}
            for name, v in feats.items():
                seq = torch.cat([plan.pool[name].to(v.dtype), v[: len(plan.index)]])
                kept[name] = seq.index_select(0, index)
            self.kept[stream] = (kept, nxt)

    def prime(self, x: torch.Tensor, clip: str, first: int) -> None:
        """Read frames ``x`` (normalised, ``first ..`` of ``clip``) as the past of the frames that follow them, without
        scoring them (the real past of a range that starts inside a clip)."""
        x = to_device(x, self.device)
        if self.speeds is not None:
            self.speeds.remember(self.speeds.grey(x), clip, first)
        if not self.model.context:
            return
        plan = self.plan(clip, first, x)
        with torch.no_grad(), autocast(self.device, self.dtype):
            feats = self.model.past_features(x)
        self.remember(plan, feats)

    def forget(self, clip: str | None = None) -> None:
        """Drop the kept past of ``clip`` (every clip's with ``None``)."""
        if clip is None:
            self.kept.clear()
        else:
            self.kept.pop(clip, None)
        if self.speeds is not None:
            self.speeds.forget(clip)


COMPILE_MIN_FRAMES = 5000
_LAYOUTS: dict[tuple, torch.memory_format] = {}  # the faster memory layout on this CPU per kind of model and input


class Runner:
    """Runs ``model`` (on ``device``, under ``cfg``) with torch, or with a runtime after :meth:`use`."""

    def __init__(self, model: AnomalyModel, cfg: ScoreConfig, device: torch.device) -> None:
        if cfg.compile and model.method == "mkd":
            raise ConfigError("score.compile does not support mkd (its maps take input gradients); "
                              "set score.compile=false")
        self.model, self.cfg, self.device = model, cfg, device
        # The memory layout the model runs in: measured on the first full batch on a CPU (_tune_layout), as the
        # faster of channels-last and contiguous differs between CPUs and backbones; channels-last on a GPU.
        self.layout = torch.channels_last if device.type == "cuda" else None
        self.runtime, self.dtype, self.compiled = None, None, False
        self._forward: Callable = model.score_and_map  # frame models
        self._step: Callable | None = None  # models with a past

    def use(self, runtime) -> None:
        """Run the model with ``runtime`` (an exported copy) from now on; ``None``: with torch again."""
        self.runtime, self.compiled = runtime, False
        if runtime is not None:
            self.dtype, self._forward, self._step = None, runtime.forward, runtime.step
            return
        self.dtype = amp_dtype(self.cfg.amp, self.device)
        self._forward, self._step = self.model.score_and_map, getattr(self.model, "step", None)
        if self.cfg.compile:
            self.compile()

    def compile(self) -> None:
        """``torch.compile`` the model (one static batch shape: short batches are padded). The first batch of each
        input size compiles (about a minute on 2 CPU cores); after that STPM scored 1.5x faster end to end
        there (benchmarks/throughput.py). Needs a C/C++ compiler (inductor)."""
        if not self.compiled and self.runtime is None:
            self.layout = self.layout or torch.channels_last  # one graph: the layout is not tuned
            if self.model.context:
                self._step = torch.compile(self.model.step, dynamic=False)
            else:
                self._forward = torch.compile(self.model.score_and_map, dynamic=False)
            self.compiled = True

    def compiles(self, frames: int) -> bool:
        """Whether a job of ``frames`` frames is compiled: ``score.compile``, or by default (None) when it has at
        least ``COMPILE_MIN_FRAMES`` (compiling costs about what 2,000 frames gain on a 2-core CPU), the method
        supports it and a C++ compiler is installed (inductor needs one)."""
        if self.runtime is not None:
            return False
        if self.cfg.compile is not None:
            return self.cfg.compile
        return (frames >= COMPILE_MIN_FRAMES and self.model.method != "mkd"
                and any(shutil.which(cc) for cc in ("c++", "g++", "clang++")))

    def run(self, x: torch.Tensor, plan: PastPlan | None = None) -> tuple:
        """The model's raw outputs for frames ``x`` on the device: ``(scores, maps)`` of a frame model (or of
        windows), ``(scores, maps, branches, features)`` of a step with its past ``plan``; rows past ``len(x)`` are
        padding."""
        n = len(x)
        x = self._pad(x)
        call = self._forward
        if plan is not None:
            if len(x) > n:  # padded rows read the last frame's past
                plan.index = torch.cat([plan.index, plan.index[-1:].expand(len(x) - n, -1)])
            call = partial(self._step, pool=plan.pool, index=plan.index)
        if self.layout is None and self.runtime is None and n == self.cfg.batch_size:
            self._tune_layout(call, x)
        with autocast(self.device, self.dtype):
            return call(x.contiguous(memory_format=self.layout or torch.channels_last))

    def _tune_layout(self, call: Callable, x: torch.Tensor) -> None:
        """Time ``call(x)`` with the model and ``x`` channels-last and contiguous (after a warm-up each) and keep the
        faster layout; measured once per process for a kind of model, input shape and thread count (so scorers in
        one process agree to the bit)."""
        teacher = getattr(self.model, "teacher", getattr(self.model, "expert", None))
        key = (type(self.model).__name__, type(getattr(teacher, "net", teacher)).__name__, tuple(x.shape),
               torch.get_num_threads(), self.dtype)
        if key not in _LAYOUTS:
            times = {}
            for layout in (torch.channels_last, torch.contiguous_format):
                self.model.to(memory_format=layout)
                xs = x.contiguous(memory_format=layout)
                with autocast(self.device, self.dtype):
                    call(xs)
                    t0 = time.perf_counter()
                    call(xs)
                    times[layout] = time.perf_counter() - t0
            _LAYOUTS[key] = min(times, key=times.get)
        self.layout = _LAYOUTS[key]
        self.model.to(memory_format=self.layout)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """A compiled model sees one static batch shape: a clip's last, shorter batch is padded with its last frame."""
        n = len(x)
        if not self.compiled or n >= self.cfg.batch_size:
            return x
        x = torch.cat([x, x[-1:].expand(self.cfg.batch_size - n, *x.shape[1:])])
        return x.contiguous(memory_format=torch.channels_last)  # the full batches' strides: no recompilation


_TIMING_CLIP = "\0speed"  # the clip name frames_per_second scores under (no real clip has a NUL in its name)


class Scorer:
    """Wraps a trained model for inference: ``scorer(x, clip, first) -> (scores (B,), maps (B, h, w), branches)`` for
    normalised frames ``x`` ``(B, 3, H, W)``; ``branches``: a fused model's standardised frame score per branch
    ``(B, len(model.branches))``, else ``None``.

    A model with a past scores single frames, the teacher run once per frame (``first``: the index of ``x[0]`` in
    clip ``clip``), with the scores of the model's windows (:meth:`~vad.models.base.AnomalyModel.score_and_map`). A
    speed cue's map is fused here, after the network, whatever runs it (:attr:`runner`)."""

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
        """:meth:`Runner.use` ``runtime``; every stream's past starts afresh."""
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
        """See the class docstring; float32. Frames of several streams in one batch: ``clip`` and ``first`` one stream
        name and frame index per frame (:meth:`Pasts.plan`); windows ``(B, 3 * window, H, W)`` are scored as they
        are. With ``score.per_position`` the map is standardised per position and the score is its maximum."""
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
