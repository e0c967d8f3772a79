"""CUHK Avenue reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vad.errors import DatasetLayoutError, LabelError
from vad.io.records import Clip, list_videos, with_labels
from vad.io.validate import require_dir


def _vol_cells(path: Path) -> np.ndarray:
    """The ``volLabel`` cells (one ``(H, W)`` mask per frame) of an Avenue ``N_label.mat`` file."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except (OSError, ValueError, NotImplementedError) as err:
        raise LabelError(f"{path}: cannot read MATLAB label file ({err})") from err
    if "volLabel" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise LabelError(f"{path}: no 'volLabel' variable; found {keys}; expected Avenue's N_label.mat")
    return np.asarray(mat["volLabel"]).reshape(-1)


def avenue_frame_labels(path: Path) -> np.ndarray:
    """``(T,)`` frame labels from an Avenue label file without stacking the whole mask volume."""
    return np.array([np.asarray(c).any() for c in _vol_cells(path)], dtype=np.uint8)


def load_avenue_volume(path: Path) -> np.ndarray:
    """Pixel masks ``(T, H, W)`` uint8 from an Avenue ``N_label.mat`` file (``volLabel`` cell array)."""
    cells = _vol_cells(path)
    try:
        return np.stack([np.asarray(c, dtype=np.uint8) != 0 for c in cells]).astype(np.uint8)
    except ValueError as err:
        raise LabelError(f"{path}: volLabel masks do not share one frame size ({err})") from err


def read_avenue(root: Path | str, split: str = "test") -> list[Clip]:
    """Clips of one split of a CUHK Avenue tree.

    Expected tree::

        ROOT/
          training_videos/01.avi .. 16.avi
          testing_videos/01.avi .. 21.avi
          testing_label_mask/1_label.mat .. 21_label.mat   (volLabel: one HxW mask per frame)

    Frame label = any pixel of the frame's mask. Test clips 08 and 18 are almost entirely anomalous:
    their per-clip AUC is undefined (see the evaluator's single-class rule).
    """
    root = require_dir(Path(root), "Avenue root")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    folder = require_dir(root / ("training_videos" if split == "train" else "testing_videos"), f"Avenue {split} videos")
    files = list_videos(folder)
    if not files:
        raise DatasetLayoutError(f"{folder}: no video files; expected 01.avi, 02.avi, ...")
    clips = [Clip(name=p.stem, path=p, kind="video", split=split) for p in files]
    if split == "train":
        return clips
    label_dir = require_dir(root / "testing_label_mask", "Avenue label folder")
    out = []
    for clip in clips:
        label_path = label_dir / f"{int(clip.name) if clip.name.isdigit() else clip.name}_label.mat"
        if not label_path.is_file():
            raise LabelError(f"{label_path}: label file missing for test video {clip.path}")
        out.append(with_labels(clip, avenue_frame_labels(label_path), label_path, pixel_mask=label_path))
    return out
