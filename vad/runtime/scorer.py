"""Batched scoring: frames -> anomaly maps -> per-frame scores, written per clip.

Output (``OUT`` is the run folder)::

    OUT/scores/<clip>.npy   (T,) float32 per-frame scores (the method's; STPM and RSTPM: max of the map)
    OUT/maps/<clip>.npy     (T, h, w) float16 anomaly maps at 1/map_stride of the input (with save_maps)

Each file is written atomically when its clip is complete; clips whose files already exist are skipped, so
an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vad.atomic import save_npy
from vad.config import ScoreConfig
from vad.device import amp_dtype, autocast, resolve_device, to_device
from vad.distributed import world
from vad.errors import ConfigError, DecodeError
from vad.io.dataset import NORMALIZATIONS, FrameStream, FrameTransform, make_loader
from vad.io.decode import decode_jpeg_files
from vad.io.records import Clip, with_frames
from vad.models import AnomalyModel, frame_scores, speed_cue
from vad.models.speed import SpeedStreams
from vad.progress import progress_bar
from vad.runs import RunFolder

log = logging.getLogger(__name__)

COMPILE_MIN_FRAMES = 5000
_LAYOUTS: dict[tuple, torch.memory_format] = {}  # the faster memory layout on this CPU per kind of model and input
_TIMING_CLIP = "\0speed"  # the clip name frames_per_second scores under (no real clip has a NUL in its name)


def _fused(model: AnomalyModel, maps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    amap = model.fuse(maps)
    return frame_scores(amap), amap


def _streams(clip: str | Sequence[str], first: int | Sequence[int], n: int) -> tuple[list[str], list[int]]:
    """Per frame of a batch of ``n``: its stream and its index there (one stream's frames ``first ..``, or a name
    and an index per frame)."""
    streams = [clip] * n if isinstance(clip, str) else list(clip)
    firsts = list(range(first, first + n)) if isinstance(first, int) else [int(f) for f in first]
    return streams, firsts


@dataclass
class PastPlan:
    """Where the frames of one batch find their past (:meth:`Scorer.plan`): ``pool`` the kept features read
    ``{level: (P, C, h, w)}``, ``index`` ``(B, context)`` rows of ``cat(pool, the batch's features)``, ``keep`` per
    stream the rows that are its last ``context`` frames after the batch and the index of its next frame."""

    pool: dict[str, torch.Tensor]
    index: torch.Tensor
    keep: dict[str, tuple[list[int], int]]


class Scorer:
    """Wraps a trained model for inference: ``scorer(x, clip, first) -> (scores (B,), maps (B, h, w), branches)`` for
    normalised frames ``x`` ``(B, 3, H, W)`` (:meth:`prepare` makes them from a :meth:`stream` batch); ``branches``:
    a fused model's standardised frame score per branch ``(B, len(model.branches))``, else ``None``.

    A model with a past (``model.context``: the motion branch) scores a stream of single frames with the teacher
    run once per frame: the scorer keeps, per clip, the teacher's features of its last ``context`` frames and
    passes them to the model's :meth:`~vad.models.motion.MotionSTPM.step` with the next consecutive frames
    (``first``: the index of ``x[0]`` in clip ``clip``). A clip's first frame, or a frame that does not follow
    the last one scored (a gap), starts afresh: its past is itself, as a window's. A range that starts inside a
    clip is preceded by a ``"context"`` batch of its real past frames (:meth:`stream`). The scores equal those
    of the model's windows (``(B, 3 * window, H, W)``, :meth:`~vad.models.base.AnomalyModel.score_and_map`).

    A model with a speed cue (:mod:`vad.models.speed`) has its map fused with the cue's here, after the network,
    whatever runs it: the optical flow of each frame against its stream's previous frame, kept per stream by the
    same rules as the past above (a first frame, or a gap, has no speed).

    The fast path (:meth:`batches`): a :class:`FrameStream` decodes in ``DataLoader`` workers while the model
    runs; on CUDA the workers send undecoded JPEG bytes or uint8 frames through pinned memory and the GPU
    decodes (nvJPEG), resizes and normalises them; the model runs channels-last under autocast (bf16 on CUDA and
    on CPUs with native bf16), optionally ``torch.compile``-d; results come back to the host one batch late, so
    the host's bookkeeping overlaps the device's next batch (a JPEG batch decoded on the GPU waits for the
    previous batch to finish: see :meth:`prepare`). ``runtime`` (:mod:`vad.runtime.export`) runs an exported copy of the
    model (ONNX Runtime, OpenVINO) in place of torch; the scorer's bookkeeping is the same.
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
        if cfg.compile and model.method == "mkd":
            raise ConfigError("score.compile does not support mkd (its maps take input gradients); "
                              "set score.compile=false")
        # The memory layout the model runs in: measured on the first full batch on a CPU (_tune_layout), as the
        # faster of channels-last and contiguous differs between CPUs and backbones; channels-last on a GPU.
        self.layout = torch.channels_last if self.device.type == "cuda" else None
        # What runs the model (torch, or ``runtime``), its precision, and each clip's kept past: set by use().
        self.runtime, self.dtype, self.compiled = None, None, False
        self._forward: Callable = model.score_and_map  # frame models
        self._step: Callable | None = None  # models with a past
        self._past: dict[str, tuple[dict[str, torch.Tensor], int]] = {}  # clip -> (its last frames' features, next)
        self._zeros: dict[str, torch.Tensor] | None = None
        self.use(runtime)

    def use(self, runtime) -> None:
        """Run the model with ``runtime`` (an exported copy: :class:`vad.runtime.export.Runtime`) from now on; ``None``:
        with torch again."""
        self.runtime, self.compiled, self._past, self._zeros = runtime, False, {}, None
        if self.speeds is not None:
            self.speeds.forget()
        if runtime is not None:
            self.dtype, self._forward, self._step = None, runtime.forward, runtime.step
            return
        self.dtype = amp_dtype(self.cfg.amp, self.device)
        self._forward, self._step = self.model.score_and_map, getattr(self.model, "step", None)
        if self.cfg.compile:
            self.compile()

    def switch(self, runtime) -> None:
        """:meth:`use` ``runtime`` from the next call on, keeping each stream's past (in float32: a runtime's
        precision)."""
        past = {s: ({k: v.float() for k, v in feats.items()}, nxt) for s, (feats, nxt) in self._past.items()}
        frames = {} if self.speeds is None else dict(self.speeds._last)
        self.use(runtime)
        self._past = past
        if self.speeds is not None:
            self.speeds._last.update(frames)

    def frames_per_second(self, x: torch.Tensor, repeat: int = 3) -> float:
        """Frames/s of this scorer on the batch ``x`` of normalised frames, as a clip's first batch: a warm-up call
        (which also tunes the memory layout), then the median of ``repeat`` timed calls."""
        times = []
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            self(x, _TIMING_CLIP, 0)
            times.append(time.perf_counter() - t0)
        self.forget(_TIMING_CLIP)
        return len(x) / statistics.median(times[1:])

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

    @torch.no_grad()  # not inference_mode: MKD's maps need input gradients, which it enables itself
    def __call__(self, x: torch.Tensor, clip: str | Sequence[str] = "", first: int | Sequence[int] = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Normalised frames ``(B, 3, H, W)`` -> (scores ``(B,)``, anomaly maps ``(B, h, w)``, branch scores or
        ``None``), float32 (a model with a past: frames ``first ..`` of clip ``clip``, see the class docstring; or
        frames of several streams in one batch, ``clip`` and ``first`` then one stream name and frame index per
        frame (:meth:`plan`); windows ``(B, 3 * window, H, W)`` are scored as they are). With
        ``score.per_position`` the map is standardised per position and the score is its maximum."""
        x = to_device(x, self.device)
        n = len(x)
        grey = None if self.speeds is None else self.speeds.grey(x[:, -3:])
        if grey is not None and x.shape[1] > 3:  # windows: the frame before the scored one is the past
            clip, first = [f"\0window{j}" for j in range(n)], [1] * n
            for j, before in enumerate(self.speeds.grey(x[:, -6:-3])):
                if not np.array_equal(before, grey[j]):  # a clip's first window repeats its frame: no past
                    self.speeds.remember(before[None], clip[j], 0)
        plan = None
        if self.model.context and x.shape[1] == 3:
            plan = self.plan(clip, first, x)
            call = partial(self._step, pool=plan.pool, index=plan.index)
        else:
            call = self._forward
        speed = None
        if grey is not None:  # the speed cue's flow runs on its own thread while the network runs
            streams, firsts = _streams(clip, first, n)
            if len(streams) != n or len(firsts) != n:
                raise ValueError(f"{n} frames with {len(streams)} stream names and {len(firsts)} frame indices")
            size = (x.shape[-2] // self.model.stride, x.shape[-1] // self.model.stride)
            speed = self.speeds.submit(grey, streams, firsts, size)
        x = self._pad(x)
        if plan is not None and len(x) > n:  # padded rows read the last frame's past
            plan.index = torch.cat([plan.index, plan.index[-1:].expand(len(x) - n, -1)])
            call = partial(self._step, pool=plan.pool, index=plan.index)
        if self.layout is None and self.runtime is None and n == self.cfg.batch_size:
            self._tune_layout(call, x)
        try:
            with autocast(self.device, self.dtype):
                out = call(x.contiguous(memory_format=self.layout or torch.channels_last))
        finally:
            relative = None if speed is None else speed.result()
        branches = None
        if len(out) == 4:
            scores, amap, branches, feats = out
            self._remember(plan, feats)
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
        speeds = self.speeds.cell_speeds(grey, *_streams(clip, first, len(grey)), size)
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

    def plan(self, clip: str | Sequence[str], first: int | Sequence[int], x: torch.Tensor) -> PastPlan:
        """Where each frame of ``x`` finds its past (:meth:`vad.models.motion.MotionSTPM.step`): frames
        ``first ..`` of one stream ``clip``, or per frame its stream and frame index (frames of several cameras
        in one batch). A stream's consecutive frames form a run; a run that follows the last frames kept of its
        stream reads their features (the pool), any other starts afresh, as a clip's first frame."""
        n, k = len(x), self.model.context
        streams, firsts = _streams(clip, first, n)
        if len(streams) != n or len(firsts) != n:
            raise ValueError(f"{n} frames with {len(streams)} stream names and {len(firsts)} frame indices")
        runs: list[dict] = []
        last: dict[str, dict] = {}
        pool: list[dict[str, torch.Tensor]] = []
        for j, (s, f) in enumerate(zip(streams, firsts, strict=True)):
            run = last.get(s)
            if run is not None and run["next"] == f:
                run["rows"].append(j)
                run["next"] += 1
                continue
            kept = self._past.get(s) if run is None else None  # a jump inside the batch starts afresh
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

    def _remember(self, plan: PastPlan, feats: dict[str, torch.Tensor]) -> None:
        """Keep, per stream of ``plan``, the features of its last ``context`` frames (``feats``: of the batch's)."""
        for stream, (rows, nxt) in plan.keep.items():
            index = torch.tensor(rows, dtype=torch.long, device=self.device)
            kept = {}
            for name, v in feats.items():
                seq = torch.cat([plan.pool[name].to(v.dtype), v[: len(plan.index)]])
                kept[name] = seq.index_select(0, index)
            self._past[stream] = (kept, nxt)

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
        self._remember(plan, feats)

    def forget(self, clip: str | None = None) -> None:
        """Drop the kept past of ``clip`` (every clip's with ``None``)."""
        if clip is None:
            self._past.clear()
        else:
            self._past.pop(clip, None)
        if self.speeds is not None:
            self.speeds.forget(clip)

    def stream(self, clips: Sequence[Clip], ranges: dict[str, tuple[int, int]] | None = None,
               partial: bool = False) -> FrameStream:
        """Batches of ``clips`` (``ranges``: frames ``[start, stop)`` of some) as this scorer wants them: single
        frames, normalised on the CPU or left for the GPU; a range inside a clip is preceded by its real past for a
        model that reads one. ``partial``: a video that decodes fewer frames than its container declares ends early
        instead of failing (:func:`~vad.io.decode.iter_frames`)."""
        common = {"batch_size": self.cfg.batch_size, "ranges": ranges, "partial": partial,
                  "past": max(self.model.context, self.speeds is not None)}
        if self.on_device:
            return FrameStream(clips, None, jpeg_bytes=True, **common)
        return FrameStream(clips, self.transform, **common)

    @torch.no_grad()
    def outputs(self, clips: Sequence[Clip], ranges: dict[str, tuple[int, int]] | None,
                branches: bool = False) -> dict[str, torch.Tensor]:
        """Raw outputs over the frames of ``clips`` (``ranges`` of them), run as this scorer runs the model (device,
        autocast, eager torch), concatenated: ``{"scores": (N,), "maps": (N, h, w)}``, or a fused model's branch maps
        before fusion (``branches``), float32 on the CPU (for the normal reference: :mod:`vad.runtime.reference`). With
        a
        speed cue, also its raw maps (``"speed"``), not fused (the reference fits the fusion)."""
        loader = make_loader(self.stream(clips, ranges), self.num_workers, pin_memory=self.device.type == "cuda")
        model, out = self.model, {}
        self.forget()
        for batch in loader:
            x = to_device(self.prepare(batch), self.device)
            clip, first = batch["clip"][0], int(batch["index"][0])
            if batch.get("context"):
                self.prime(x, clip, first)
                continue
            with autocast(self.device, self.dtype):
                if model.context:
                    plan = self.plan(clip, first, x)
                    maps, feats = model.step_branch_maps(x, plan.pool, plan.index)
                    self._remember(plan, feats)
                    got = maps if branches else dict(zip(("scores", "maps"), _fused(model, maps), strict=True))
                elif branches:
                    got = model.branch_maps(x)
                else:
                    got = dict(zip(("scores", "maps"), model.score_and_map(x), strict=True))
            if self.speeds is not None:
                size = tuple(next(iter(got.values())).shape[-2:]) if branches else tuple(got["maps"].shape[-2:])
                got["speed"] = self.speed_maps(self.speeds.grey(x), clip, first, size)
            for k, v in got.items():
                out.setdefault(k, []).append(v.float().cpu())
        self.forget()
        return {k: torch.cat(v) for k, v in out.items()}

    def cell_speeds(self, runs: Sequence[tuple[Clip, tuple[int, int]]]) -> np.ndarray:
        """The speed cue's cell speeds ``(N, h, w)`` (before its rows' references) over runs of consecutive frames
        ``[(clip, (start, stop))]`` (for :meth:`vad.models.speed.SpeedCue.fit_rows`); a run's first frame reads
        its real previous frame where it has one."""
        h, w = (s // self.model.stride for s in self.transform.size)
        out = []
        for clip, (a, b) in runs:
            self.forget()
            for batch in make_loader(self.stream([clip], {clip.name: (a, b)}), 0):
                grey = self.speeds.grey(self.prepare(batch))
                first = int(batch["index"][0])
                if batch.get("context"):
                    self.speeds.remember(grey, clip.name, first)
                    continue
                n = len(grey)
                out.append(self.speeds.cell_speeds(grey, [clip.name] * n, list(range(first, first + n)), (h, w)))
        self.forget()
        return np.concatenate(out)

    def prepare(self, batch: dict) -> torch.Tensor:
        """A :meth:`stream` batch -> normalised frames (on the device when decoded or transformed there)."""
        if "jpeg" in batch:
            if self.device.type == "cuda":
                # torchvision's nvJPEG writes from its own stream into memory allocated on ours, without waiting
                # for our queued work: let the previous batch finish first (pytorch/vision#9606).
                torch.cuda.current_stream(self.device).synchronize()
            data = list(torch.split(batch["jpeg"], batch["sizes"]))
            frames = decode_jpeg_files(batch["paths"], data, self.device)
        else:
            frames = batch["frames"].to(self.device, non_blocking=True)
        return self.transform(frames) if frames.dtype == torch.uint8 else frames  # __call__ makes it channels-last

    def batches(self, loader, maps: bool = False
                ) -> Iterator[tuple[dict, np.ndarray, np.ndarray | None, np.ndarray | None]]:
        """``(batch, scores (B,), maps (B, h, w) float16 at map_stride or None, branch scores (B, k) or None)`` for
        every batch of ``loader``, on the host. Each batch's results are copied back asynchronously and handed out
        after the next batch has been queued on the device."""
        pending = None
        for batch in loader:
            clip, first = batch["clip"][0], int(batch["index"][0])
            if batch.get("context"):
                self.prime(self.prepare(batch), clip, first)
                continue
            scores, amap, branches = self(self.prepare(batch), clip, first)
            small = self.downsample(amap).half() if maps else None
            host = [t if t is None else t.to("cpu", non_blocking=True) for t in (scores, small, branches)]
            out = (batch, *host)
            event = torch.cuda.Event() if self.device.type == "cuda" else None
            if event is not None:
                event.record(torch.cuda.current_stream(self.device))
            if pending is not None:
                yield self._host(*pending)
            pending = (out, event)
        if pending is not None:
            yield self._host(*pending)

    @staticmethod
    def _host(out: tuple, event) -> tuple[dict, np.ndarray, np.ndarray | None, np.ndarray | None]:
        if event is not None:
            event.synchronize()
        batch, *arrays = out
        return batch, *(None if a is None else a.numpy() for a in arrays)

    def downsample(self, amap: torch.Tensor) -> torch.Tensor:
        """Anomaly map at the finest-level stride -> one value per ``map_stride`` input pixels (the maximum, so
        a saved map's maximum is still the frame score and shares its scale and thresholds)."""
        factor = max(1, self.cfg.map_stride // self.model.stride)
        return F.max_pool2d(amap.unsqueeze(1), factor, ceil_mode=True).squeeze(1) if factor > 1 else amap

    @property
    def num_workers(self) -> int:
        """``score.num_workers``, or by default: on CUDA up to 8 decode workers (one core left for the main
        process); on a CPU none (decoding in the main process between batches, measured faster than workers
        competing for the same cores: benchmarks/throughput.py)."""
        if self.cfg.num_workers is not None:
            return self.cfg.num_workers
        return min(8, max(1, (os.cpu_count() or 2) - 1)) if self.device.type == "cuda" else 0


def score_clips(
    scorer: Scorer, clips: Sequence[Clip], out: RunFolder | Path | str, overwrite: bool = False,
    progress: bool = True, is_done: Callable[[Clip], bool] | None = None,
    on_done: Callable[[Clip], None] | None = None,
) -> dict[str, np.ndarray]:
    """Score every frame of ``clips``; write each clip's scores (and maps) into run folder ``out``. Returns
    ``{clip: scores}``. Clips for which ``is_done`` is true (default: a scores file exists) are skipped unless
    ``overwrite``; ``on_done(clip)`` runs as each clip's files are written (the caller's bookkeeping for resuming).
    What was derived from a clip's earlier scores (its video, the run's metrics...) is deleted as its new scores are
    written (:meth:`RunFolder.invalidate`). An unlabelled video that decodes fewer frames than its container
    declares (a partly recorded file) is scored as far as it decodes, and said so."""
    run = out if isinstance(out, RunFolder) else RunFolder(out)
    names = [c.name for c in clips]
    if len(set(names)) != len(names):
        raise ValueError("clip names must be unique within one run; got duplicates")
    done = is_done or (lambda c: run.scores(c.name).exists())
    todo = [c for c in clips if overwrite or not done(c)]
    results = {c.name: np.load(run.scores(c.name)) for c in clips if c not in todo}
    if not todo:
        return results
    if scorer.compiles(sum(c.num_frames for c in todo)):
        scorer.compile()
    loader = make_loader(scorer.stream(todo, partial=True), scorer.num_workers,
                         pin_memory=scorer.device.type == "cuda")
    by_name = {c.name: c for c in todo}
    pending: dict[str, dict] = {}  # clip -> {"scores": (T,) array, "maps": (T, h, w) array | None, "done": int}
    t0, n, stale = time.perf_counter(), 0, []
    progress = progress and world().main  # under torchrun rank 0 reports

    def finish(clip: Clip, entry: dict) -> None:
        scorer.forget(clip.name)
        stale.extend(run.invalidate([clip.name]))
        results[clip.name] = _flush(clip, entry, run)
        if on_done is not None:
            on_done(clip)

    with progress_bar(total=sum(c.num_frames for c in todo), desc="scoring", unit="frame", progress=progress) as bar:
        for batch, scores, small, branches in scorer.batches(loader, maps=scorer.cfg.save_maps):
            name, index = batch["clip"][0], batch["index"].numpy()
            clip = by_name[name]
            entry = pending.setdefault(name, {"scores": np.empty(clip.num_frames, np.float32), "maps": None, "done": 0,
                                              "branches": None})
            _collect(entry, clip.num_frames, index, scores, small, branches)
            n += len(index)
            bar.update(len(index))
            if entry["done"] == clip.num_frames:
                finish(clip, pending.pop(name))
    for name, entry in pending.items():  # videos that decoded fewer frames than their containers declare
        finish(_partly_recorded(by_name[name], entry), entry)
    if progress:
        _log_scored(n, len(todo), time.perf_counter() - t0, run, stale)
    return results


def _collect(entry: dict, frames: int, index: np.ndarray, scores: np.ndarray, small: np.ndarray | None,
             branches: np.ndarray | None) -> None:
    """Put one batch's scores (and maps, branch scores) of a clip of ``frames`` frames at ``index`` in its entry."""
    entry["scores"][index] = scores
    if branches is not None:
        if entry["branches"] is None:
            entry["branches"] = np.empty((frames, branches.shape[1]), np.float32)
        entry["branches"][index] = branches
    if small is not None:
        if entry["maps"] is None:
            entry["maps"] = np.empty((frames, *small.shape[1:]), np.float16)
        entry["maps"][index] = small
    entry["done"] += len(index)


def _log_scored(n: int, clips: int, secs: float, run: RunFolder, stale: list[Path]) -> None:
    log.info(f"scored {n} frames of {clips} clips in {secs:.1f}s ({n / secs:.1f} frames/s) -> {run.scores_dir}")
    if stale:
        shown = ", ".join(p.name for p in stale[:4]) + (", ..." if len(stale) > 4 else "")
        log.info(f"note: removed {len(stale)} output(s) made from earlier scores ({shown}): evaluate and render "
                 "again to remake them")


def _partly_recorded(clip: Clip, entry: dict) -> Clip:
    """The clip of a video that ended after ``entry["done"]`` frames, cut to them (the entry too), with a note; an
    error when that cannot be (labelled clips, frame folders, frames missing in the middle)."""
    k = entry["done"]
    declared = clip.num_frames
    if clip.kind != "video" or clip.labels is not None or k == 0:
        what = "its labels count them all" if clip.labels is not None else "every frame must be scored"
        raise DecodeError(f"{clip.path}: {k} of {declared} frames decoded and scored; {what} (a truncated or "
                          "corrupt file?)")
    log.warning(f"note: {clip.path}: the container declares {declared} frames but {k} decode (a partly recorded "
                f"file?); scored those {k}, {declared - k} missing")
    for key in ("scores", "maps", "branches"):
        if entry[key] is not None:
            entry[key] = entry[key][:k]
    return with_frames(clip, k)


def _flush(clip: Clip, entry: dict, run: RunFolder) -> np.ndarray:
    for key, path in (("maps", run.maps(clip.name)), ("branches", run.branches(clip.name))):
        if entry[key] is not None:
            save_npy(entry[key], path)
        else:  # one left by an earlier scoring would no longer match these scores
            path.unlink(missing_ok=True)
    save_npy(entry["scores"], run.scores(clip.name))  # scores last: their presence marks the clip done
    return entry["scores"]
