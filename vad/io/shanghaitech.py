"""ShanghaiTech Campus reader: its own download, or the research layout (training frame folders)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vad.errors import ConfigError, DatasetLayoutError, LabelError
from vad.io.masks import check_mask_shape
from vad.io.records import Clip, frames_clip, list_videos, natural_key, visible, with_labels
from vad.io.research import research_root
from vad.io.validate import find_dir, require_dir


def scene_of(name: str) -> str:
    """Scene id from a ShanghaiTech file name: ``01_0014`` -> ``01``."""
    scene, sep, _ = name.partition("_")
    if not sep or not scene.isdigit():
        raise DatasetLayoutError(f"{name!r}: expected a ShanghaiTech name 'SS_NNN' with a numeric scene prefix")
    return scene


def _scene_filter(scenes: Iterable[int | str] | None) -> set[str] | None:
    if scenes is None:
        return None
    out = set()
    for s in scenes:
        try:
            out.add(f"{int(s):02d}")
        except (TypeError, ValueError):
            raise ConfigError(f"scene {s!r} is not a scene number; expected e.g. 1 or '01'") from None
    return out


def read_shanghaitech(
    root: Path | str, split: str = "test", scenes: Iterable[int | str] | None = None
) -> list[Clip]:
    """Clips of one split of a ShanghaiTech Campus tree.

    Expected tree::

        ROOT/
          training/videos/01_001.avi ...        normal training videos (scene = prefix)
          testing/frames/01_0014/000.jpg ...    test clips as JPEG frame folders
          testing/test_frame_mask/01_0014.npy   (T,) 0 normal / 1 anomalous
          testing/test_pixel_mask/01_0014.npy   (T, H, W), optional

    In the research layout the training videos come as frame folders, ``training/frames/01_001/000.jpg ...``
    (scene = prefix); the test half is the same.

    ``scenes`` keeps only those scenes (e.g. ``[1]``). Test labels are checked against each clip's frame
    count, pixel masks against its frame count and size (from headers); training videos are probed lazily
    (``clip.num_frames``). A root one level above ``training/`` and ``testing/`` is named in the error, unless it
    holds the research layout in a folder named ``shanghaitech/``, which is then read.
    """
    research = research_root("shanghaitech", root)
    root = require_dir(Path(root) if research is None else research, "ShanghaiTech root")
    keep = _scene_filter(scenes)
    if split == "train":
        clips = _train_frame_folders(root) if research is not None else _train_videos(root)
    elif split == "test":
        clips = _test_clips(root, keep)
    else:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if keep is not None:
        clips = [c for c in clips if c.scene in keep]
        if not clips:
            raise DatasetLayoutError(f"{root}: no {split} clips in scenes {sorted(keep)}")
    return clips


def _train_videos(root: Path) -> list[Clip]:
    folder = find_dir(root, ["training/videos"], "ShanghaiTech training videos folder (or research layout: "
                                                 "training/frames/01_001/000.jpg ...)")
    files = list_videos(folder)
    if not files:
        raise DatasetLayoutError(f"{folder}: no video files; expected training videos like 01_001.avi")
    return [Clip(name=p.stem, path=p, kind="video", scene=scene_of(p.stem)) for p in files]


def _train_frame_folders(root: Path) -> list[Clip]:
    folder = root / "training" / "frames"
    dirs = sorted((p for p in visible(folder) if p.is_dir()), key=natural_key)
    if not dirs:
        raise DatasetLayoutError(f"{folder}: no clip folders; expected training clips like 01_001/000.jpg")
    return [frames_clip(d, name=d.name, scene=scene_of(d.name)) for d in dirs]


def _test_clips(root: Path, keep: set[str] | None) -> list[Clip]:
    """Labelled test clips (of the ``keep`` scenes), pixel masks checked against their clips."""
    folder = find_dir(root, ["testing/frames"], "ShanghaiTech test frames folder")
    mask_dir = find_dir(root, ["testing/test_frame_mask"], "ShanghaiTech frame-mask folder")
    pixel_dir = root / "testing" / "test_pixel_mask"
    dirs = sorted((p for p in visible(folder) if p.is_dir()), key=natural_key)
    if not dirs:
        raise DatasetLayoutError(f"{folder}: no clip folders; expected test clips like 01_0014/000.jpg")
    clips = []
    for d in dirs:
        if keep is not None and scene_of(d.name) not in keep:
            continue
        label_path = mask_dir / f"{d.name}.npy"
        if not label_path.is_file():
            raise LabelError(f"{label_path}: frame mask missing for test clip {d}")
        pixel = pixel_dir / f"{d.name}.npy"
        clip = frames_clip(d, name=d.name, scene=scene_of(d.name),
                           pixel_mask=pixel if pixel.is_file() else None)
        labels = _load_npy(label_path, "frame mask")
        if clip.pixel_mask is not None:  # header only: the masks are memory-mapped, not read
            check_mask_shape(clip, pixel, _load_npy(pixel, "pixel mask", mmap=True).shape)
        clips.append(with_labels(clip, labels, label_path))
    return clips


def _load_npy(path: Path, what: str, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as err:
        raise LabelError(f"{path}: cannot read {what} ({err}); expected a .npy array") from err
