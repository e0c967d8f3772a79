"""Pixel ground truth: reading it, and checking it against its clip when a dataset is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vad.errors import LabelError
from vad.io.records import Clip


def load_pixel_mask(clip: Clip) -> np.ndarray | None:
    """Pixel ground truth ``(T, H, W)`` uint8 for ``clip``, or ``None`` when it has none.

    Reads ShanghaiTech ``.npy`` (memory-mapped), Avenue ``.mat`` and UCSD ``_gt`` mask folders.
    """
    if clip.pixel_mask is None:
        return None
    return read_pixel_mask(clip.pixel_mask, clip.num_frames, clip.name)


def read_pixel_mask(path: Path, num_frames: int, name: str = "") -> np.ndarray:
    """Pixel masks ``(T, H, W)`` from ``path`` (``.npy``, ``.mat`` or a mask folder), checked to hold
    ``num_frames`` masks."""
    path = Path(path)
    if path.is_dir():
        from vad.io.ucsd import load_mask_folder

        masks = load_mask_folder(path)
    elif path.suffix == ".npy":
        masks = np.load(path, mmap_mode="r")
    elif path.suffix == ".mat":
        from vad.io.avenue import load_avenue_volume

        masks = load_avenue_volume(path)
    else:
        raise LabelError(f"{path}: unknown pixel-mask format; expected .npy, .mat or a folder of mask images")
    if masks.ndim != 3 or len(masks) != num_frames:
        raise LabelError(
            f"{path}: pixel mask of shape {masks.shape} for clip {name!r} with {num_frames} frames; "
            "expected (T, H, W) with one mask per frame"
        )
    return masks


def check_mask_shape(clip: Clip, source: Path, shape: tuple[int, ...]) -> None:
    """Raise unless pixel masks of ``shape`` (from ``source``) hold one mask of the clip's frame size per frame.

    ``clip.num_frames`` and ``clip.frame_size`` come from headers (container, first frame), so this is cheap.
    """
    expected = (clip.num_frames, *clip.frame_size)
    if tuple(shape) != expected:
        raise LabelError(
            f"{source}: pixel masks of shape {tuple(shape)} (frames, height, width) for clip {clip.name!r} "
            f"({clip.path}); expected {expected}: one {expected[1]}x{expected[2]} mask per frame"
        )
