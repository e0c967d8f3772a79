"""Data layer: dataset readers (plain :class:`Clip` records), one decoding function, torch datasets."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vad.errors import ConfigError
from vad.io.avenue import AVENUE_LABELS, read_avenue
from vad.io.decode import iter_frames
from vad.io.folder import read_folder
from vad.io.masks import load_pixel_mask
from vad.io.probe import VideoInfo, probe
from vad.io.records import Clip
from vad.io.shanghaitech import read_shanghaitech
from vad.io.ucsd import read_ped1, read_ped2

DATASETS = ("shanghaitech", "avenue", "ped1", "ped2", "folder")


def read_dataset(
    name: str, root: Path | str, split: str = "test", scenes: Iterable[int | str] | None = None,
    frame_labels: str | None = None,
) -> list[Clip]:
    """Clips of ``split`` from dataset ``name`` at ``root``. ``folder`` ignores ``split`` (unlabelled).

    Each benchmark's reader takes its original archive or the research layout (``training/frames``,
    ``testing/frames`` and one frame-label file: :mod:`vad.io.research`), whichever ``root`` holds.
    ``frame_labels`` picks Avenue's frame labels (``"masks"``, the default, or ``"published"``: see
    :func:`read_avenue`); other datasets have one set of labels and refuse it.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if name != "avenue" and frame_labels is not None:
        raise ConfigError(f"frame_labels is an Avenue option ({AVENUE_LABELS}); dataset {name!r} has one set of labels")
    if name == "shanghaitech":
        return read_shanghaitech(root, split, scenes)
    if scenes is not None:
        raise ConfigError(f"scenes selection is a ShanghaiTech option; dataset {name!r} has no scenes")
    if name == "avenue":
        return read_avenue(root, split, frame_labels)
    if name == "ped1":
        return read_ped1(root, split)
    if name == "ped2":
        return read_ped2(root, split)
    return read_folder(root)


__all__ = [
    "AVENUE_LABELS", "DATASETS", "Clip", "VideoInfo", "iter_frames", "load_pixel_mask", "probe",
    "read_avenue", "read_dataset", "read_folder", "read_ped1", "read_ped2", "read_shanghaitech",
]
