"""Data layer: dataset readers (plain :class:`Clip` records), one decoding function, torch datasets."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vad.io.avenue import read_avenue
from vad.io.decode import VideoInfo, iter_frames, probe
from vad.io.folder import read_folder
from vad.io.masks import load_pixel_mask
from vad.io.ped2 import read_ped2
from vad.io.records import Clip
from vad.io.shanghaitech import read_shanghaitech

DATASETS = ("shanghaitech", "avenue", "ped2", "folder")


def read_dataset(
    name: str, root: Path | str, split: str = "test", scenes: Iterable[int | str] | None = None
) -> list[Clip]:
    """Clips of ``split`` from dataset ``name`` at ``root``. ``folder`` ignores ``split`` (unlabelled)."""
    if name == "shanghaitech":
        return read_shanghaitech(root, split, scenes)
    if scenes is not None:
        raise ValueError(f"scenes selection is a ShanghaiTech option; dataset {name!r} has no scenes")
    if name == "avenue":
        return read_avenue(root, split)
    if name == "ped2":
        return read_ped2(root, split)
    if name == "folder":
        return read_folder(root)
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")


__all__ = [
    "DATASETS", "Clip", "VideoInfo", "iter_frames", "load_pixel_mask", "probe",
    "read_avenue", "read_dataset", "read_folder", "read_ped2", "read_shanghaitech",
]
