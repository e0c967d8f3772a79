from __future__ import annotations

import numpy as np

from vad.errors import LabelError
from vad.io.records import Clip


def load_pixel_mask(clip: Clip) -> np.ndarray | None:
    """Pixel ground truth ``(T, H, W)`` uint8 for ``clip``, or ``None`` when it has none.

    Reads ShanghaiTech ``.npy`` (memory-mapped), Avenue ``.mat`` and UCSD ``_gt`` mask folders.
    """
    path = clip.pixel_mask
    if path is None:
        return None
    if path.is_dir():
        from vad.io.ped2 import load_mask_folder

        masks = load_mask_folder(path)
    elif path.suffix == ".npy":
        masks = np.load(path, mmap_mode="r")
    elif path.suffix == ".mat":
        from vad.io.avenue import load_avenue_volume

        masks = load_avenue_volume(path)
    else:
        raise LabelError(f"{path}: unknown pixel-mask format; expected .npy, .mat or a folder of mask images")
    if masks.ndim != 3 or len(masks) != clip.num_frames:
        raise LabelError(
            f"{path}: pixel mask of shape {masks.shape} for clip {clip.name!r} with {clip.num_frames} frames; "
            "expected (T, H, W) with one mask per frame"
        )
    return masks
