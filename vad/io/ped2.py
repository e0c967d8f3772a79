"""UCSD Ped2 reader."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from vad.errors import DatasetLayoutError, LabelError
from vad.io.records import Clip, frames_clip, list_images, natural_key, visible, with_labels
from vad.io.validate import require_dir

_GT_ENTRY = re.compile(r"gt\s*\{\s*(\d+)\s*\}\s*=\s*\[([^\]]*)\]")


def parse_ucsd_m(path: Path) -> dict[int, list[tuple[int, int]]]:
    """Parse UCSD's ``UCSDped2.m``: ``TestDataset.gt{1} = [61:180];`` -> ``{1: [(61, 180)]}``.

    Ranges are 1-based and inclusive, as in the file; an entry may list several (``[5:90, 140:200]``).
    """
    out = _parse_gt_text(Path(path).read_text(errors="replace"), path)
    if not out:
        raise LabelError(f"{path}: no 'gt{{N}} = [a:b]' entries found; expected UCSD's UCSDped2.m")
    return out


def _parse_gt_text(text: str, source: Path) -> dict[int, list[tuple[int, int]]]:
    """The ``gt{N}`` table in ``text`` (empty if it has none); a malformed range raises."""
    out: dict[int, list[tuple[int, int]]] = {}
    for clip_no, body in _GT_ENTRY.findall(text):
        spans = []
        for part in re.split(r"[,;\s]+", body.strip()):
            if not part:
                continue
            a, _, b = part.partition(":")
            try:
                spans.append((int(a), int(b or a)))
            except ValueError:
                raise LabelError(f"{source}: cannot parse range {part!r} in gt{{{clip_no}}}") from None
        out[int(clip_no)] = spans
    return out


def spans_to_labels(spans: list[tuple[int, int]], num_frames: int, source: Path) -> np.ndarray:
    labels = np.zeros(num_frames, np.uint8)
    for a, b in spans:
        if not 1 <= a <= b <= num_frames:
            raise LabelError(f"{source}: anomalous range {a}:{b} outside frames 1..{num_frames}")
        labels[a - 1 : b] = 1
    return labels


def read_ped2(root: Path | str, split: str = "test") -> list[Clip]:
    """Clips of one split of a UCSD Ped2 tree (``UCSD_Anomaly_Dataset.v1p2/UCSDped2``).

    Expected tree::

        ROOT/
          Train/Train001/001.tif ...
          Test/Test001/001.tif ...
          Test/Test001_gt/001.bmp ...     pixel ground truth (optional per clip)
          Test/UCSDped2.m                 frame labels: TestDataset.gt{1} = [61:180]; ...

    Frame labels come from ``UCSDped2.m`` (any ``*.m`` in ``Test/`` with ``gt{N}`` entries); without it,
    from the ``_gt`` masks (a frame is anomalous if its mask has any pixel set).
    """
    root = require_dir(Path(root), "UCSD Ped2 root")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    top = "Train" if split == "train" else "Test"
    folder = require_dir(root / top, f"Ped2 {top} folder")
    dirs = sorted(
        (p for p in visible(folder) if p.is_dir() and re.fullmatch(rf"{top}\d+", p.name)), key=natural_key
    )
    if not dirs:
        raise DatasetLayoutError(f"{folder}: no clip folders; expected {top}001/001.tif ...")
    clips = []
    for d in dirs:
        gt = folder / f"{d.name}_gt"
        clips.append(frames_clip(d, name=d.name, split=split, pixel_mask=gt if gt.is_dir() else None))
    if split == "train":
        return clips
    found = _find_gt_m(folder)
    if found is not None:
        m_file, gt_table = found
        out = []
        for clip in clips:
            number = int(clip.name[len(top):])
            if number not in gt_table:
                raise LabelError(f"{m_file}: no gt{{{number}}} entry for test clip {clip.path}")
            out.append(with_labels(clip, spans_to_labels(gt_table[number], clip.num_frames, m_file), m_file))
        return out
    out = []
    for clip in clips:
        if clip.pixel_mask is None:
            raise LabelError(
                f"{folder}: no UCSDped2.m frame-label file and no {clip.name}_gt mask folder for {clip.path}; "
                "expected one of them"
            )
        masks = load_mask_folder(clip.pixel_mask)
        out.append(with_labels(clip, masks.reshape(len(masks), -1).any(1), clip.pixel_mask))
    return out


def _find_gt_m(folder: Path) -> tuple[Path, dict[int, list[tuple[int, int]]]] | None:
    """The first visible ``*.m`` file in ``folder`` that parses as a ``gt{N} = [...]`` table, with the table."""
    for m in sorted(p for p in visible(folder) if p.suffix == ".m"):
        table = _parse_gt_text(m.read_text(errors="replace"), m)
        if table:  # other MATLAB files have no gt{N} entries
            return m, table
    return None


def load_mask_folder(folder: Path) -> np.ndarray:
    """``(T, H, W)`` uint8 binary masks from a folder of mask images (UCSD ``_gt`` bmp files)."""
    from PIL import Image

    paths = list_images(folder)
    if not paths:
        raise LabelError(f"{folder}: mask folder holds no images; expected 001.bmp ...")
    masks = []
    for p in paths:
        with Image.open(p) as img:
            masks.append((np.asarray(img.convert("L")) > 127).astype(np.uint8))
    return np.stack(masks)
