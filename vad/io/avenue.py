"""CUHK Avenue reader: the flat layout, or its two archives (`Avenue Dataset/`, `ground_truth_demo/`) side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from vad.errors import ConfigError, DatasetLayoutError, LabelError
from vad.io.masks import avenue_cells, check_mask_shape, volume_shape
from vad.io.records import Clip, list_videos, spans_to_labels, with_labels
from vad.io.research import gt_spans, read_research, research_root
from vad.io.validate import find_dir, require_dir

AvenueLabels = Literal["masks", "published"]
AVENUE_LABELS: tuple[str, ...] = ("masks", "published")
# Where each folder may be: the flat layout first, then the archives as they unpack.
_VIDEO_DIRS = {split: [name, f"Avenue Dataset/{name}"]
               for split, name in (("train", "training_videos"), ("test", "testing_videos"))}
_LABEL_DIRS = ["testing_label_mask", "ground_truth_demo/testing_label_mask"]
_PUBLISHED_FILES = ["avenue.mat", "ground_truth_demo/avenue.mat"]


def published_intervals(path: Path) -> list[list[tuple[int, int]]]:
    """Per test video, the anomalous ``(first, last)`` frames (1-based, inclusive) of ``avenue.mat``.

    That file (``gt``: a 1x21 cell, per video a 2xK array of start and end frames) ships with the evaluation code
    of ano_pred_cvpr2018 (Liu et al., CVPR 2018); its annotations come from Hasan et al., CVPR 2016.
    """
    return gt_spans(path, "ano_pred_cvpr2018's avenue.mat (gt: a cell of 2xK [start; end])")


def read_avenue(root: Path | str, split: str = "test", labels: AvenueLabels | None = None) -> list[Clip]:
    """Clips of one split of a CUHK Avenue tree.

    Expected tree: the flat layout, or the two downloads unpacked side by side (each folder may be in either)::

        ROOT/                                         ROOT/
          training_videos/01.avi .. 16.avi              Avenue Dataset/training_videos/01.avi ..
          testing_videos/01.avi .. 21.avi               Avenue Dataset/testing_videos/01.avi ..
          testing_label_mask/1_label.mat .. 21_...      ground_truth_demo/testing_label_mask/1_label.mat ..
          avenue.mat     (labels="published" only)      avenue.mat (or ground_truth_demo/avenue.mat)

    ``N_label.mat`` holds ``volLabel``, a 1xT cell of HxW masks: the clip's pixel ground truth, checked against
    the video's frame count and size. Frame labels (``labels``): ``"masks"``, a frame is anomalous when any pixel
    of its mask is set; ``"published"``, the intervals of ano_pred_cvpr2018's ``avenue.mat`` that most published
    Avenue AUCs use (data/avenue/README.md says how they differ). Test clips 08 and 18 are almost entirely
    anomalous under the masks: their per-clip AUC is undefined. ``labels=None`` is ``"masks"``.

    A root in the research layout (``training/frames/01/0000.jpg``, ``testing/frames/``, ``avenue.mat`` or
    ``frame_labels_avenue.npy``; or the folder holding its ``avenue/``) is read by
    :func:`vad.io.research.read_research`. It has no masks: its frame labels are its label file's, which
    ``labels=None`` and ``"published"`` take and ``"masks"`` refuses.
    """
    if labels is not None and labels not in AVENUE_LABELS:
        raise ValueError(f"Avenue frame labels {labels!r} unknown; expected one of {AVENUE_LABELS}")
    research = research_root("avenue", root)
    if research is not None:
        if labels == "masks":
            raise ConfigError(f"frame_labels 'masks': {research} is Avenue in the research layout, which has no "
                              "pixel masks (testing_label_mask); its frame labels are those of avenue.mat or "
                              "frame_labels_avenue.npy: leave frame_labels unset or set it to 'published'")
        return read_research("avenue", research, split)
    labels = labels or "masks"
    root = require_dir(Path(root), "Avenue root")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    folder = find_dir(root, _VIDEO_DIRS[split], f"Avenue {split} videos folder")
    files = list_videos(folder)
    if not files:
        raise DatasetLayoutError(f"{folder}: no video files; expected 01.avi, 02.avi, ...")
    clips = [Clip(name=p.stem, path=p, kind="video") for p in files]
    if split == "train":
        return clips
    label_dir = find_dir(root, _LABEL_DIRS, "Avenue label folder (testing_label_mask)")
    published = _published(root, len(clips)) if labels == "published" else None
    out = []
    for i, clip in enumerate(clips):
        label_path = label_dir / f"{int(clip.name) if clip.name.isdigit() else clip.name}_label.mat"
        if not label_path.is_file():
            raise LabelError(f"{label_path}: label file missing for test video {clip.path}")
        cells = avenue_cells(label_path)
        check_mask_shape(clip, label_path, volume_shape(cells, label_path))
        frame_labels = np.array([c.any() for c in cells], dtype=np.uint8)
        source = label_path
        if published is not None:
            source, spans = published[0], published[1][i]
            frame_labels = spans_to_labels(spans, clip.num_frames, f"{source} gt cell {i + 1} ({clip.name})")
        out.append(with_labels(clip, frame_labels, source, pixel_mask=label_path))
    return out


def _published(root: Path, num_clips: int) -> tuple[Path, list[list[tuple[int, int]]]]:
    """``avenue.mat`` and its intervals, one entry per test video."""
    path = next((root / rel for rel in _PUBLISHED_FILES if (root / rel).is_file()), None)
    if path is None:
        looked = " and ".join(str(root / rel) for rel in _PUBLISHED_FILES)
        raise LabelError(f"published Avenue labels (avenue.mat from ano_pred_cvpr2018's data) not found; looked for "
                         f"{looked}; put it there or use the mask labels")
    intervals = published_intervals(path)
    if len(intervals) != num_clips:
        raise LabelError(f"{path}: {len(intervals)} gt cells for {num_clips} test videos; expected one per video")
    return path, intervals
