"""A training run set up (:func:`open_session`): this rank's share of the training frames and the hold-out as
streams (or samples held in memory: ``train.cache``), the model built in the precision it trains in, and its plan of
epochs per stage. :mod:`vad.offline.train` runs the epochs, checkpoints and resumes.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vad.config import RunConfig, to_dict
from vad.device import amp_dtype, autocast, cpu_has_bf16_instructions, resolve_device
from vad.distributed import frame_shares, world
from vad.errors import ConfigError, InputError, UsageError
from vad.io.dataset import FrameStream, FrameTransform, make_loader
from vad.io.decode import first_frame, looks_grey
from vad.io.records import Clip
from vad.models import AnomalyModel, backbone_spec, build_model, depthwise_in_float32
from vad.offline.augment import ObjectShift
from vad.offline.trainset import RUN_FRAMES, TrainSet, footprint
from vad.runs import RunFolder
from vad.runtime.checkpoint import FORMAT
from vad.runtime.reference import holdout, spread_runs

log = logging.getLogger(__name__)


def training_fps(clips: Sequence[Clip], cfg: RunConfig) -> float | None:
    """The frame rate of the training footage (the videos' median; frame folders: ``eval.fps``): the rate at which the
    motion branch learned how things move (a live stream is sampled to it: :mod:`vad.live`)."""
    rates = sorted(c.fps for c in clips if c.kind == "video" and c.fps)
    return float(rates[len(rates) // 2]) if rates else cfg.eval.fps


def input_size(cfg: RunConfig, clips: Sequence[Clip]) -> tuple[int, int]:
    """The network's input ``(height, width)``: explicit, or the footage's aspect ratio at ``input_height``."""
    h = cfg.model.input_height
    if cfg.model.input_width:
        return h, cfg.model.input_width
    fh, fw = first_frame(clips[0]).shape[-2:]  # decoded: upright
    return h, max(16, int(round(h * fw / fh / 16)) * 16)


def stage_epochs(model: AnomalyModel, cfg: RunConfig, steps_per_epoch: int) -> dict[str, int]:
    """Epochs per training stage: ``train.epochs`` for the first (the students / the cloner), then
    ``train.disc_epochs`` for RSTPM's discriminative network. The schedule's length, which depends on the data, is
    checked here, before any training starts."""
    t = cfg.train
    option = {stage: "train.disc_epochs" if stage == "disc" else "train.epochs" for stage in model.stages}
    epochs = {stage: t.disc_epochs if stage == "disc" else t.epochs for stage in model.stages}
    for stage, n in epochs.items():
        if t.schedule == "onecycle" and n * steps_per_epoch < 4:
            raise ConfigError(f"train.schedule 'onecycle' needs at least 4 steps per stage; stage {stage!r} has "
                             f"{n * steps_per_epoch} (raise {option[stage]}, lower train.batch_size, "
                             "or use 'constant')")
    return epochs


@dataclass
class Session:
    """What one training run holds: its data streams, model, plan of epochs and where it writes."""

    cfg: RunConfig
    run: RunFolder
    device: torch.device
    dtype: torch.dtype | None
    model: AnomalyModel
    meta: dict  # saved in every checkpoint: format, config, input size, normalisation, training clips
    plan: list[str]  # the stage of every epoch
    epochs: dict[str, int]
    steps_per_epoch: int
    train_stream: FrameStream
    val_clips: list[Clip]
    val_ranges: dict[str, tuple[int, int]]  # the hold-out: the last train.val_fraction of every training clip
    val_loader: Any
    gen: torch.Generator  # pseudo-anomalies (RSTPM's discriminative stage), object shifts
    progress: bool
    shift: ObjectShift | None = None  # training augmentation (train.object_shift), set up before training
    runs: tuple[list, list] | None = None  # train.cache: the (training, hold-out) runs of frames to hold in memory
    trainset: TrainSet | None = None  # train.cache: the training samples in memory (else train_stream decodes)
    valset: TrainSet | None = None  # train.cache: the hold-out samples of the validation loss
    speed_runs: list = field(default_factory=list)  # the training frames the speed cue's rows are fitted on

    def batches(self, epoch: int):
        if self.trainset is not None:
            return self.trainset.epoch(self.cfg.train.batch_size, self.cfg.train.seed + 1000 * world().rank, epoch)
        self.train_stream.set_epoch(epoch)
        return make_loader(self.train_stream, self.cfg.train.num_workers, self.device.type == "cuda")

    def val_batches(self):
        return self.val_loader if self.valset is None else self.valset.ordered()


def open_session(clips: Sequence[Clip], cfg: RunConfig, run: RunFolder, device: str | torch.device,
             progress: bool, ranges: dict[str, tuple[int, int]] | None = None) -> Session:
    """Data streams (this rank's share of the training frames, the hold-out), the model and its plan of epochs."""
    device = resolve_device(device)
    t = cfg.train
    if not clips:
        raise InputError("no training clips")
    size = input_size(cfg, clips)
    transform = FrameTransform(size=size, normalization=backbone_spec(cfg.model.backbone).normalization)
    train_ranges, val_ranges = holdout(clips, t.val_fraction, ranges)
    speed_runs = _sampled(train_ranges, t.max_frames, True, "training")  # every rank's: rank 0 fits the speed cue
    w = world()
    if w.world_size > 1:  # DDP: each rank trains on an equal share of the frames (the same number of steps)
        train_ranges = frame_shares(train_ranges, w.rank, w.world_size)
        if not train_ranges:
            raise UsageError(f"{w.world_size} processes cannot share {len(clips)} training clips' frames")
    train_runs = _sampled(train_ranges, t.max_frames, t.cache, "training")
    n_train = sum(b - a for _, (a, b) in train_runs)
    # Every epoch takes exactly this many steps (the schedule's length); the stream always has at least as many
    # batches (with several decode workers each worker's last batch may be partial, giving a few more).
    steps_per_epoch = math.ceil(n_train / t.batch_size)
    torch.manual_seed(t.seed)
    np.random.seed(t.seed % 2**32)
    model = build_model(cfg.model)
    model.to(device, memory_format=torch.channels_last)
    dtype = amp_dtype(t.amp, device)
    if t.amp == "auto" and dtype is None and device.type == "cpu" and w.world_size == 1 and cpu_has_bf16_instructions():
        dtype = faster_cpu_precision(model, t.batch_size, size)
    cpu_bf16 = dtype == torch.bfloat16 and device.type == "cpu"
    if dtype is None or cpu_bf16:
        # float32: the same features; bf16 on a CPU: as close to float32's as unfolded bf16's, 1.8x faster
        # (docs/speed.md, "Training"). The training targets only: scoring does not fold (see fold_teacher).
        model.fold_teacher()
    if cpu_bf16:
        depthwise_in_float32(model)
    runs = _cache_plan(cfg, model, transform, train_runs, val_ranges, device) if t.cache else None
    train_stream = FrameStream([c for c in clips if c.name in train_ranges], transform, batch_size=t.batch_size,
                               shuffle=True, seed=t.seed + 1000 * w.rank, ranges=train_ranges,
                               shuffle_buffer=t.shuffle_buffer, window=model.window)
    val_loader = make_loader(FrameStream(clips, transform, batch_size=32, ranges=val_ranges, window=model.window),
                             t.num_workers, device.type == "cuda")
    epochs = stage_epochs(model, cfg, steps_per_epoch)
    meta = {"format": FORMAT, "config": to_dict(cfg), "input_size": list(size),
            "normalization": transform.normalization, "train_clips": [c.name for c in clips],
            "colour": not all(looks_grey(first_frame(c)) for c in clips), "fps": training_fps(clips, cfg),
            "train_ranges": {n: list(r) for n, r in (ranges or {}).items()}}
    return Session(cfg, run, device, dtype, model, meta,
                    [stage for stage in model.stages for _ in range(epochs[stage])], epochs, steps_per_epoch,
                    train_stream, list(clips), val_ranges, val_loader,
                    torch.Generator().manual_seed(t.seed + 1000 * w.rank), progress and w.main, None, runs,
                    speed_runs=speed_runs)


_MEASURED: dict[tuple, torch.dtype | None] = {}  # faster_cpu_precision's answers in this process


def faster_cpu_precision(model: AnomalyModel, batch: int, size: tuple[int, int], steps: int = 2
                         ) -> torch.dtype | None:
    """``train.amp: auto`` on a CPU with bf16 dot products but no AMX: bf16 (depthwise convolutions in float32, as
    on AMX) where a step of the student measured faster than float32 here, else None (float32). On a 2-core AMD EPYC
    (Zen 4) bf16 took 0.70x float32's step; with oneDNN held to AVX512-BF16 on a Xeon, 1.20x (docs/speed.md). Copies
    of the student, a random batch: the model is untouched."""
    student = getattr(model, "student", None)
    if student is None:
        return None
    key = (type(student).__name__, sum(p.numel() for p in student.parameters()), batch, tuple(size))
    if key in _MEASURED:  # once per process and shape: trainings of one session (a resume, a test) agree
        return _MEASURED[key]
    x = torch.randn(batch, 3, *size).contiguous(memory_format=torch.channels_last)
    seconds = {}
    for dtype in (None, torch.bfloat16):
        net = copy.deepcopy(student).train()
        if dtype is not None:
            depthwise_in_float32(net)
        times = []
        for _ in range(steps + 1):  # the first warms up
            t0 = time.perf_counter()
            with autocast(torch.device("cpu"), dtype):
                out = net(x)
            sum(v.float().square().mean() for v in out.values()).backward()
            times.append(time.perf_counter() - t0)
        seconds[dtype] = min(times[1:])
    faster = _MEASURED[key] = torch.bfloat16 if seconds[torch.bfloat16] < seconds[None] else None
    log.info(f"train.amp auto: a student step took {seconds[torch.bfloat16]:.2f} s in bf16 and {seconds[None]:.2f} s "
             f"in float32 on this CPU (AVX512-BF16, no AMX): training in {'bf16' if faster else 'float32'}")
    return faster


def _sampled(ranges: dict[str, tuple[int, int]], max_frames: int | None, cache: bool, what: str
             ) -> list[tuple[str, tuple[int, int]]]:
    """The runs of frames to train (or validate) on: all of ``ranges``, or for footage of more than ``max_frames``
    frames, runs of :data:`~vad.offline.trainset.RUN_FRAMES` spread evenly over it (train.max_frames)."""
    total = sum(b - a for a, b in ranges.values())
    if max_frames is None or total <= max_frames:
        return sorted(ranges.items())
    if not cache:
        raise ConfigError(f"train.max_frames={max_frames} samples the {total} {what} frames, which needs "
                          "train.cache: true; set train.max_frames=null to stream every frame")
    return spread_runs(ranges, max_frames, RUN_FRAMES)


def _cache_plan(cfg: RunConfig, model: AnomalyModel, transform: FrameTransform, train_runs: list,
                val_ranges: dict, device: torch.device) -> tuple[list, list]:
    """train.cache: the (training, hold-out) runs of frames to hold in memory, checked against train.cache_gb before
    anything is decoded."""
    t = cfg.train
    val_runs = _sampled(val_ranges, None if t.max_frames is None else max(1, t.max_frames // 4), True, "hold-out")
    size = transform.size
    values = 0
    if model.teacher_cache:  # the teacher's features per frame: channels x the level's grid
        with torch.no_grad():
            probe = model.teacher(torch.zeros(1, 3, *size, device=device))
        values = sum(v[0].numel() for v in probe.values())
    need = sum(footprint(r, model.window, size, values) for r in (train_runs, val_runs))
    if need > t.cache_gb * 2**30:
        raise ConfigError(f"train.cache needs {need / 2**30:.1f} GB for these frames, more than train.cache_gb="
                          f"{t.cache_gb:g}; lower train.max_frames (now {t.max_frames}) or raise train.cache_gb, "
                          "or set train.cache=false to decode every epoch")
    return train_runs, val_runs


def hold_samples(s: Session) -> None:
    """train.cache: decode the planned samples into memory, with the teacher's features."""
    teacher = s.model if s.model.teacher_cache else None
    t0 = time.perf_counter()
    s.trainset, s.valset = (TrainSet(s.val_clips, r, s.train_stream.transform, s.model.window, teacher, s.device,
                                     s.dtype) for r in s.runs)
    log.info(f"training samples in memory: {len(s.trainset)} training, {len(s.valset)} hold-out windows, "
             f"{(s.trainset.nbytes + s.valset.nbytes) / 2**20:.0f} MB, {time.perf_counter() - t0:.0f}s")


def plain_stream(s: Session):
    """This rank's training frames in order (not shuffled): batches ``{"frames", "clip", "index"}`` on the host."""
    if s.trainset is not None:
        return s.trainset.ordered()
    ts = s.train_stream
    stream = FrameStream(ts.clips, ts.transform, batch_size=ts.batch_size, ranges=ts.ranges, window=ts.window)
    return make_loader(stream, s.cfg.train.num_workers)
