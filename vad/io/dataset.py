"""PyTorch datasets over :class:`~vad.io.records.Clip` records.

:class:`FrameStream` is an ``IterableDataset`` that yields whole batches (use ``DataLoader(batch_size=None)``,
see :func:`make_loader`): each worker decodes its own share of the clips in bounded chunks, resizes and
normalises them as one tensor operation, and yields ``{"frames", "clip", "index"}``. With ``window=w`` each sample
is a window of ``w`` consecutive frames of one clip, stacked on the channel axis (``(B, 3w, h, w)``, oldest first, the
frame it belongs to last); see :func:`windows`.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vad.errors import DecodeError
from vad.io.decode import iter_frames, read_jpeg_files, resolve_backend
from vad.io.records import Clip

# (mean, std) in [0, 1] units. "lite0": the EfficientNet-Lite weights expect (x - 127) / 128 on 0..255.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "lite0": ((127 / 255,) * 3, (128 / 255,) * 3),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@dataclass(frozen=True)
class FrameTransform:
    """uint8 ``(B, 3k, H, W)`` -> float32 ``(B, 3k, *size)``: bilinear antialiased resize, then normalise (``k > 1``:
    windows of ``k`` frames stacked on the channel axis, each transformed alike).

    ``size`` is ``(height, width)``; ``None`` keeps the frame size. Works on any device: on the CPU the resize
    runs on uint8 (rounded to whole grey levels), on a GPU in float; the two differ by at most one grey level.
    """

    size: tuple[int, int] | None = (256, 256)
    normalization: str = "imagenet"

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization {self.normalization!r}; expected one of {sorted(NORMALIZATIONS)}"
            )
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"size must be (height, width) with positive entries; got {self.size!r}")

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] % 3 or not frames.shape[1]:
            raise ValueError(f"expected uint8 frames (B, 3, H, W) or windows (B, 3k, H, W); got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        if frames.shape[1] > 3:  # windows: every frame alike
            b, c = frames.shape[:2]
            x = self(frames.reshape(b * c // 3, 3, *frames.shape[-2:]))
            return x.reshape(b, c, *x.shape[-2:])
        resize = self.size is not None and tuple(frames.shape[-2:]) != tuple(self.size)
        if resize and frames.device.type == "cpu":  # uint8 channels-last: 7x faster than float on the CPU
            return self.normalise(self.resized(frames))
        x = frames.float().div_(255.0)
        if resize:  # on a GPU, in float
            x = F.interpolate(x, size=tuple(self.size), mode="bilinear", antialias=True, align_corners=False)
        return self._standardise(x)

    def resized(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> uint8 ``(B, 3, *size)``, resized as on the CPU (in uint8); ``normalise`` of it is
        this transform's output there. A trainer keeps these (4x smaller than the output:
        :mod:`vad.offline.trainset`)."""
        if self.size is None or tuple(frames.shape[-2:]) == tuple(self.size):
            return frames
        return F.interpolate(frames.cpu().contiguous(memory_format=torch.channels_last), size=tuple(self.size),
                             mode="bilinear", antialias=True, align_corners=False)

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames of the output size -> float32, normalised (one new tensor, scaled in place: 2.6x faster
        than dividing by 255 and standardising apart)."""
        scale, shift = _uint8_affine(self.normalization, frames.device)
        return frames.float().mul_(scale).sub_(shift)

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        mean_t, std_t = _stats(self.normalization, x.device)
        return ((x - mean_t) / std_t).contiguous()


def windows(seq: torch.Tensor, window: int) -> torch.Tensor:
    """Consecutive frames ``(n + window - 1, 3, H, W)`` -> their ``n`` windows ``(n, 3 * window, H, W)``: window ``i``
    stacks frames ``i .. i + window - 1`` on the channel axis, oldest first."""
    n = len(seq) - window + 1
    if n < 1:
        raise ValueError(f"{len(seq)} frame(s) hold no window of {window}")
    return torch.cat([seq[j : j + n] for j in range(window)], dim=1)


@functools.lru_cache(maxsize=16)
def _stats(normalization: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as (1, 3, 1, 1) tensors on ``device``, made once: creating them per batch from Python lists
    would be a blocking host-to-device copy, a sync per batch on a GPU."""
    mean, std = NORMALIZATIONS[normalization]
    return torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1)


@functools.lru_cache(maxsize=16)
def _uint8_affine(normalization: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``frames * scale - shift`` = standardised ``frames / 255``, made once per device."""
    mean, std = _stats(normalization, device)
    return 1 / (255 * std), mean / std


class FrameStream(IterableDataset):
    """Stream transformed frame batches from ``clips``.

    Yields dicts ``{"frames": float (B, 3, h, w), "clip": list[str] (B,), "index": int64 (B,)}``.
    With ``transform=None`` (not with ``shuffle``) ``"frames"`` are the decoded uint8 ``(B, 3, H, W)``, for the
    consumer to resize and normalise on its device (a GPU: 4x less to copy and no CPU resize). With
    ``jpeg_bytes`` too, a batch of a JPEG-folder clip carries ``"jpeg"`` (the files' encoded bytes, packed end
    to end), ``"sizes"`` (bytes per file) and ``"paths"`` instead of ``"frames"``, for
    :func:`~vad.io.decode.decode_jpeg_files` on the GPU (nvJPEG).
    Clips are split across ``DataLoader`` workers (whole clips per worker). Several processes give each their
    own clips or ``ranges`` (:func:`vad.distributed.shard_clips`, :func:`vad.distributed.frame_shares`).
    ``ranges`` maps a clip name to the ``(start, stop)`` frames to read (default: all), e.g. for a hold-out.
    ``partial``: a video that ends before the frame count its container declares yields what decodes (the
    consumer counts the frames it got). ``past=k`` (single frames, unshuffled): a range that starts inside a clip is
    preceded by a batch of its (up to) ``k`` real predecessors, marked ``"context": True``, for a consumer that
    keeps a stream's past (a motion model scoring a stream: :class:`vad.runtime.scorer.Scorer`).
    ``window > 1``: each sample is frame ``t`` with its ``window - 1`` predecessors of the same clip (a window never
    crosses clips); a clip's first frames, which have fewer predecessors, repeat its frame 0 in their place; a range
    that starts later reads the frames before it as context. Every frame is decoded and transformed once (a
    rolling tail of ``window - 1`` frames carries over between decoded chunks).
    Without ``shuffle`` every batch holds consecutive frames of one clip, in order. With ``shuffle``, clip
    order is shuffled per epoch (``set_epoch``) and a buffer of ``shuffle_buffer`` transformed frames mixes
    frames across clips; memory is bounded by that buffer (``shuffle_buffer * 3 * h * w * 4`` bytes).
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        transform: FrameTransform | None,
        *,
        batch_size: int = 32,
        backend: str = "auto",
        shuffle: bool = False,
        shuffle_buffer: int = 256,
        seed: int = 0,
        decode_batch: int = 64,
        ranges: Mapping[str, tuple[int, int]] | None = None,
        jpeg_bytes: bool = False,
        window: int = 1,
        partial: bool = False,
        past: int = 0,
    ) -> None:
        super().__init__()
        if not clips:
            raise ValueError("FrameStream needs at least one clip")
        if transform is None and shuffle:
            raise ValueError("a shuffled FrameStream needs a transform (its buffer mixes clips of any frame size)")
        if jpeg_bytes and transform is not None:
            raise ValueError("jpeg_bytes passes undecoded frames on: it needs transform=None")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if window < 1:
            raise ValueError(f"window must be >= 1; got {window}")
        if jpeg_bytes and window > 1:
            raise ValueError("jpeg_bytes passes single undecoded frames on: it needs window=1")
        if past and (window > 1 or shuffle):
            raise ValueError("past sends context frames before a range's single frames: it needs window=1, unshuffled")
        self.clips = list(clips)
        self.transform = transform
        self.batch_size = batch_size
        self.backend = backend
        self.shuffle = shuffle
        self.shuffle_buffer = max(shuffle_buffer, batch_size)
        self.seed = seed
        self.decode_batch = decode_batch
        self.ranges = dict(ranges or {})
        self.jpeg_bytes = jpeg_bytes
        self.window = window
        self.partial = partial
        self.past = past
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self) -> tuple[list[Clip], int]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shard, shards = worker, workers
        order = np.arange(len(self.clips))
        if self.shuffle:
            np.random.default_rng((self.seed, self.epoch)).shuffle(order)
        return [self.clips[i] for i in order[shard::shards]], shard

    def _decoded(self, clips: list[Clip]) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, bool]]:
        """``(clip, index, frames or windows, context)`` per decoded chunk; ``context``: ``past`` frames before a
        range."""
        for clip in clips:
            chunk = self.batch_size if not self.shuffle else self.decode_batch
            start, stop = self.ranges.get(clip.name, (0, None))
            context = min(start, self.window - 1 if self.window > 1 else self.past)  # the range's real predecessors
            tail = None  # the last window - 1 frames before the current chunk
            for first, frames in iter_frames(clip, batch_size=chunk, backend=self.backend, start=start - context,
                                             stop=stop, partial=self.partial):
                x = frames if self.transform is None else self.transform(frames)
                if self.window == 1:
                    index = torch.arange(first, first + len(frames))
                    lead = int((index < start).sum())
                    if lead:
                        yield clip.name, index[:lead], x[:lead], True
                    if lead < len(x):
                        yield clip.name, index[lead:], x[lead:], False
                    continue
                if tail is None and first == 0:  # the clip's first frames: frame 0 stands in for their past
                    tail = x[:1].expand(self.window - 1, *x.shape[1:])
                seq = x if tail is None else torch.cat([tail, x])
                tail = seq[-(self.window - 1):]
                last = first + len(x)  # seq holds frames [last - len(seq), last)
                index = torch.arange(max(start, last - len(seq) + self.window - 1), last)
                if len(index):
                    yield clip.name, index, windows(seq[len(seq) - len(index) - self.window + 1:], self.window), False

    def _encoded(self, clip: Clip) -> Iterator[dict]:
        assert clip.frame_paths is not None
        start, stop = self.ranges.get(clip.name, (0, None))
        paths = clip.frame_paths[start:stop]
        if not paths:
            raise DecodeError(f"{clip.path}: no frames in [{start}, {stop}) ({len(clip.frame_paths)} frames)")
        context = min(start, self.past)
        if context:
            before = clip.frame_paths[start - context : start]
            yield {**self._jpeg_batch(clip, start - context, before), "context": True}
        for i in range(0, len(paths), self.batch_size):
            yield self._jpeg_batch(clip, start + i, paths[i : i + self.batch_size])

    @staticmethod
    def _jpeg_batch(clip: Clip, first: int, paths: Sequence) -> dict:
        data = read_jpeg_files(paths)  # one packed tensor per batch: one shared-memory segment between processes
        return {"jpeg": torch.cat(data), "sizes": [len(d) for d in data], "paths": list(paths),
                "clip": [clip.name] * len(paths), "index": torch.arange(first, first + len(paths))}

    def _plain(self, clips: list[Clip]) -> Iterator[dict]:
        for clip in clips:
            if self.jpeg_bytes and resolve_backend(clip, self.backend) == "torchvision":
                yield from self._encoded(clip)
                continue
            for name, index, x, context in self._decoded([clip]):
                batch = {"frames": x, "clip": [name] * len(index), "index": index}
                yield {**batch, "context": True} if context else batch

    def __iter__(self) -> Iterator[dict]:
        clips, shard = self._shard()
        if not self.shuffle:
            yield from self._plain(clips)
            return
        rng = np.random.default_rng((self.seed, self.epoch, shard))
        buf_x: list[torch.Tensor] = []
        buf_meta: list[tuple[str, int]] = []
        for name, index, x, _ in self._decoded(clips):
            buf_x.extend(f.clone() for f in x.unbind(0))  # own storage: a kept frame frees its batch
            buf_meta.extend((name, int(i)) for i in index)
            while len(buf_x) >= self.shuffle_buffer:
                yield self._take(buf_x, buf_meta, rng, self.batch_size)
        while buf_x:
            yield self._take(buf_x, buf_meta, rng, min(self.batch_size, len(buf_x)))

    @staticmethod
    def _take(buf_x: list, buf_meta: list, rng: np.random.Generator, n: int) -> dict:
        picks = sorted(rng.choice(len(buf_x), size=n, replace=False).tolist(), reverse=True)
        xs, meta = [], []
        for i in picks:  # swap-remove: O(1) per frame
            buf_x[i], buf_x[-1] = buf_x[-1], buf_x[i]
            buf_meta[i], buf_meta[-1] = buf_meta[-1], buf_meta[i]
            xs.append(buf_x.pop())
            meta.append(buf_meta.pop())
        return {
            "frames": torch.stack(xs),
            "clip": [m[0] for m in meta],
            "index": torch.tensor([m[1] for m in meta], dtype=torch.int64),
        }


def make_loader(stream: FrameStream, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` over a :class:`FrameStream` (batches are formed by the stream itself)."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
    )


def read_ahead(batches: Iterable, depth: int = 1) -> Iterator:
    """``batches`` produced by a thread of their own, at most ``depth`` ready ahead of the consumer: the next batch
    decodes and resizes while this one is scored (libjpeg-turbo, PyAV and torch's resize release the interpreter's
    lock), where a loader without workers leaves a core waiting for each decode. No processes, so no copies between
    them. An error comes out of the consumer's loop where it would have; closing the generator stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put((batch, None)):
                    return
            put((end, None))
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, raised there)
            put((None, e))

    thread = threading.Thread(target=produce, name="vad-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            batch, error = ready.get()
            if error is not None:
                raise error
            if batch is end:
                return
            yield batch
    finally:
        stop.set()
        thread.join()
