"""Training samples held in memory: every frame decoded and resized once, with the frozen teacher's features.

Streaming training (:class:`~vad.io.dataset.FrameStream`) decodes, resizes and runs the teacher on every frame
of every window again in each epoch, although none of it changes between epochs for a frame that no augmentation
alters. :class:`TrainSet` does that work once:

- the frames, uint8 at the network's input size (resized as :class:`~vad.io.dataset.FrameTransform` does on the
  CPU, so normalising one gives exactly the streamed sample), each decoded once even when it belongs to several
  windows;
- for a model whose loss reads only the teacher's features of unaltered frames (``model.teacher_cache``: STPM and
  its motion branch), the teacher's pyramid of each frame (float32). A sample that augmentation alters
  (:class:`~vad.offline.augment.ObjectShift`) has its teacher features computed again (:func:`teacher_for`);
- the samples are windows ending at every frame of ``runs`` (``[(clip, (start, stop))]``), a clip's first frames
  repeating frame 0 as their past, as :class:`~vad.io.dataset.FrameStream` makes them. An epoch is a permutation
  of all samples (:meth:`TrainSet.epoch`): every sample once, shuffled across clips.

Long footage is sampled before it gets here (``train.max_frames``, :func:`vad.runtime.reference.spread_runs` in
:mod:`vad.offline.train`), so memory and time per epoch stay bounded; :func:`footprint` is checked against
``train.cache_gb`` before anything is decoded. Measured: docs/speed.md, "Training".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from vad.device import autocast, to_device
from vad.io.dataset import FrameTransform
from vad.io.decode import iter_frames
from vad.io.records import Clip

RUN_FRAMES = 16  # long footage is sampled in runs of this many consecutive frames (train.max_frames)
TEACHER_BATCH = 16  # frames per teacher pass while the features are computed


def frame_rows(runs: Sequence[tuple[str, tuple[int, int]]], window: int) -> dict[str, np.ndarray]:
    """``{clip: sorted frame indices}``: every frame a window ending in ``runs`` reads (its past clamped to frame 0)."""
    rows: dict[str, set[int]] = {}
    for name, (a, b) in runs:
        rows.setdefault(name, set()).update(range(max(0, a - window + 1), b))
    return {name: np.array(sorted(r), dtype=np.int64) for name, r in rows.items()}


def footprint(runs: Sequence[tuple[str, tuple[int, int]]], window: int, size: tuple[int, int],
              feature_values: int) -> int:
    """Bytes a :class:`TrainSet` of ``runs`` holds: uint8 frames, and ``feature_values`` float32 per frame."""
    frames = sum(len(r) for r in frame_rows(runs, window).values())
    return frames * (3 * size[0] * size[1] + 4 * feature_values)


class TrainSet:
    """Windows of ``window`` frames ending at every frame of ``runs`` of ``clips``, decoded once; with ``model``
    (a ``teacher_cache`` model), the teacher's features of every frame too. See the module docstring."""

    def __init__(self, clips: Sequence[Clip], runs: Sequence[tuple[str, tuple[int, int]]], transform: FrameTransform,
                 window: int = 1, model=None, device: torch.device | str = "cpu", dtype=None) -> None:
        if not runs:
            raise ValueError("TrainSet needs at least one run of frames")
        by_name = {c.name: c for c in clips}
        self.transform = transform
        self.window = window
        rows = frame_rows(runs, window)
        parts, first, self.clips, samples, index = [], 0, [], [], []
        for name, idx in rows.items():  # decode each clip's frames once, in order
            parts.append(_decode(by_name[name], idx, transform))
            lookup = dict(zip(idx.tolist(), range(first, first + len(idx)), strict=True))
            for clip, (a, b) in runs:
                if clip == name:
                    samples += [[lookup[max(0, t - k)] for k in range(window - 1, -1, -1)] for t in range(a, b)]
                    index += range(a, b)
                    self.clips += [name] * (b - a)
            first += len(idx)
        self.frames = torch.cat(parts)  # (rows, 3, h, w) uint8, channels-last
        self.rows = torch.tensor(samples, dtype=torch.int64).view(-1, window)  # (samples, window): oldest first
        self.index = torch.tensor(index, dtype=torch.int64)  # the frame each sample ends at
        self.features = None if model is None else _features(model, self.frames, transform, device, dtype)
        self.past_levels = getattr(model, "past_levels", ())

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        feats = 0 if self.features is None else sum(f.nbytes for f in self.features.values())
        return self.frames.nbytes + feats

    def batch(self, samples: torch.Tensor) -> dict:
        """Samples (indices) -> ``{"frames": float (B, 3 * window, h, w), "clip", "index"}``, plus ``"teacher"``
        (``(past, present)`` pyramids, as ``model.teacher_features`` returns them) when the features are kept."""
        rows = self.rows[samples]
        b, w = rows.shape
        x = self.transform.normalise(self.frames[rows.reshape(-1)]).reshape(b, 3 * w, *self.frames.shape[-2:])
        out = {"frames": x, "clip": [self.clips[i] for i in samples.tolist()], "index": self.index[samples]}
        if self.features is not None:
            past = [{k: self.features[k][rows[:, j]] for k in self.past_levels} for j in range(w - 1)]
            out["teacher"] = (past, {k: f[rows[:, -1]] for k, f in self.features.items()})
        return out

    def epoch(self, batch_size: int, seed: int, epoch: int) -> Iterator[dict]:
        """Every sample once, shuffled (the same order for the same ``seed`` and ``epoch``), in batches."""
        order = torch.from_numpy(np.random.default_rng((seed, epoch)).permutation(len(self)))
        for i in range(0, len(order), batch_size):
            yield self.batch(order[i:i + batch_size])

    def ordered(self, batch_size: int = 32) -> Iterator[dict]:
        """Every sample once, in order (by clip, then frame)."""
        for i in range(0, len(self), batch_size):
            yield self.batch(torch.arange(i, min(i + batch_size, len(self))))


def _decode(clip: Clip, idx: np.ndarray, transform: FrameTransform) -> torch.Tensor:
    """The frames ``idx`` (sorted) of ``clip``, resized to the input size: uint8 ``(len(idx), 3, h, w)``."""
    keep, out = set(idx.tolist()), []
    for first, frames in iter_frames(clip, batch_size=64, start=int(idx[0]), stop=int(idx[-1]) + 1):
        wanted = [i for i in range(len(frames)) if first + i in keep]
        if wanted:
            out.append(transform.resized(frames[wanted]))
    x = torch.cat(out)
    if len(x) != len(idx):
        raise RuntimeError(f"{clip.path}: decoded {len(x)} of the {len(idx)} training frames asked for")
    return x


@torch.no_grad()
def _features(model, frames: torch.Tensor, transform: FrameTransform, device, dtype) -> dict[str, torch.Tensor]:
    """The teacher's pyramid of every frame: ``{level: float32 (rows, C, h, w)}`` on the host."""
    if not model.teacher_cache:
        raise ValueError(f"{model.method}'s loss does not read the teacher's features of unaltered frames")
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(frames), TEACHER_BATCH):
        x = to_device(transform.normalise(frames[i:i + TEACHER_BATCH]), torch.device(device))
        with autocast(torch.device(device), dtype):
            t = model.teacher(x.contiguous(memory_format=torch.channels_last))
        for k, v in t.items():
            out.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def kept_teacher(batch: dict, device: torch.device) -> dict:
    """``{"teacher": (past, present)}``: the batch's kept teacher features on ``device`` (``model.loss``'s
    ``teacher``), or ``{}`` when the batch has none."""
    if "teacher" not in batch:
        return {}
    past, now = batch["teacher"]
    return {"teacher": ([{k: to_device(v, device) for k, v in p.items()} for p in past],
                        {k: to_device(v, device) for k, v in now.items()})}


def teacher_for(model, x: torch.Tensor, teacher: tuple[list[dict], dict], changed: Sequence[int]
                ) -> tuple[list[dict], dict]:
    """Kept teacher features of a batch, with those of the samples ``changed`` (altered by augmentation) computed
    again from ``x``."""
    if not len(changed):
        return teacher
    rows = torch.as_tensor(list(changed), dtype=torch.int64, device=x.device)
    fresh_past, fresh_now = model.teacher_features(x.index_select(0, rows))
    past, now = teacher

    def put(kept: dict, fresh: dict) -> dict:
        return {k: v.index_copy(0, rows, fresh[k].to(v.dtype)) for k, v in kept.items()}

    return [put(p, f) for p, f in zip(past, fresh_past, strict=True)], put(now, fresh_now)
