"""Plain records that readers return and the decoder consumes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from vad.errors import DatasetLayoutError, DecodeError, LabelError
from vad.io.probe import probe

VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".mkv", ".mov", ".mpg", ".mpeg", ".m4v", ".webm", ".wmv", ".flv", ".ts", ".3gp"}
)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})

ClipKind = Literal["video", "frames"]


def natural_key(path: Path) -> tuple:
    """Sort key that orders ``2.jpg`` before ``10.jpg``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def visible(folder: Path) -> list[Path]:
    """Entries of ``folder`` without hidden ones (``.DS_Store``, macOS ``._*`` files, ``.ipynb_checkpoints``)."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def list_videos(folder: Path) -> list[Path]:
    """Video files in ``folder`` (hidden files skipped), in natural order."""
    return sorted((p for p in visible(folder) if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()), key=natural_key)


def list_images(folder: Path) -> tuple[Path, ...]:
    """Image files in ``folder`` (hidden files skipped), in natural order."""
    return tuple(
        sorted(
            (p for p in visible(folder) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
            key=natural_key,
        )
    )


@dataclass(frozen=True, eq=False)
class Clip:
    """One clip: a video file or a folder of frames, with optional labels.

    ``labels`` is ``(T,)`` uint8 (1 = anomalous frame) for labelled test clips, ``None`` otherwise.
    ``pixel_mask`` points at the clip's pixel ground truth (``.npy`` of ``(T, H, W)``, a ``.mat`` file
    or a folder of mask images); :func:`vad.io.masks.load_pixel_mask` reads any of them.
    """

    name: str
    path: Path
    kind: ClipKind
    scene: str | None = None
    labels: np.ndarray | None = field(default=None, repr=False)
    pixel_mask: Path | None = None
    frame_paths: tuple[Path, ...] | None = field(default=None, repr=False)

    @cached_property
    def num_frames(self) -> int:
        """Frame count: files in the folder, or the count the video container declares (header only)."""
        if self.kind == "frames":
            assert self.frame_paths is not None
            return len(self.frame_paths)
        return probe(self.path).num_frames

    @cached_property
    def frame_size(self) -> tuple[int, int]:
        """``(height, width)`` of the frames, from the first frame's header or the container (nothing decoded)."""
        if self.kind == "video":
            info = probe(self.path)
            return info.height, info.width
        assert self.frame_paths is not None
        try:
            with Image.open(self.frame_paths[0]) as img:
                width, height = img.size
        except (UnidentifiedImageError, OSError) as err:
            raise DecodeError(f"{self.frame_paths[0]}: cannot read image header ({err})") from err
        return height, width

    @cached_property
    def fps(self) -> float | None:
        """Frame rate of a video clip; ``None`` for frame folders (the dataset's notes give it)."""
        if self.kind == "frames":
            return None
        return probe(self.path).fps


def frames_clip(folder: Path, **kwargs) -> Clip:
    """A :class:`Clip` over an image folder; raises if it holds no images."""
    frames = list_images(folder)
    if not frames:
        raise DatasetLayoutError(
            f"{folder}: no frames found; expected image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return Clip(path=folder, kind="frames", frame_paths=frames, **kwargs)


def _copy(clip: Clip, **changes) -> Clip:
    """``clip`` with ``changes``, keeping what it already probed from its file (frame count, fps, frame size)."""
    from dataclasses import replace

    new = replace(clip, **changes)
    for key in ("num_frames", "fps", "frame_size"):  # cached_property values live in the instance __dict__
        if key in clip.__dict__ and key not in new.__dict__:
            new.__dict__[key] = clip.__dict__[key]
    return new


def with_labels(clip: Clip, labels: np.ndarray, source: Path, **changes) -> Clip:
    """``clip`` with frame labels (and any other ``changes``) attached, after :func:`check_labels`."""
    return _copy(clip, labels=check_labels(clip, labels, source), **changes)


def renamed(clip: Clip, name: str) -> Clip:
    """``clip`` under another name (same source)."""
    return clip if name == clip.name else _copy(clip, name=name)


def with_frames(clip: Clip, num_frames: int) -> Clip:
    """``clip`` holding only its first ``num_frames`` frames (a video that decodes fewer than its container
    declares)."""
    new = _copy(clip)
    new.__dict__["num_frames"] = num_frames
    return new


def check_labels(clip: Clip, labels: np.ndarray, source: Path) -> np.ndarray:
    """Validate a clip's frame labels against its frame count; return them as ``(T,)`` uint8."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise LabelError(f"{source}: frame labels must be 0 or 1; got values {np.unique(labels)[:10]}")
    if len(labels) != clip.num_frames:
        raise LabelError(
            f"{source}: {len(labels)} frame labels for clip {clip.name!r} ({clip.path}), "
            f"which has {clip.num_frames} frames; expected one label per frame"
        )
    return labels.astype(np.uint8)


def spans_to_labels(spans: list[tuple[int, int]], num_frames: int, where: str) -> np.ndarray:
    """``(T,)`` uint8 labels from 1-based inclusive ``spans``; a span outside ``1..num_frames`` is an error."""
    labels = np.zeros(num_frames, np.uint8)
    for a, b in spans:
        if not 1 <= a <= b <= num_frames:
            raise LabelError(f"{where}: anomalous range {a}:{b} outside frames 1..{num_frames}")
        labels[a - 1 : b] = 1
    return labels
