"""UCSD Anomaly Detection Dataset readers: Ped1 and Ped2 (``UCSD_Anomaly_Dataset.v1p2/UCSDped1``, ``.../UCSDped2``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np

from vad.errors import DatasetLayoutError, LabelError
from vad.io.masks import check_mask_shape, load_mask_folder
from vad.io.records import Clip, frames_clip, natural_key, spans_to_labels, visible, with_labels
from vad.io.research import read_research, research_root
from vad.io.validate import find_dir, require_dir

Variant = Literal["ped1", "ped2"]
M_LINE = "TestVideoFile{end+1}.gt_frame = [a:b, c:d];"
_HEADER = re.compile(r"TestVideoFile\s*=\s*\{\s*\}\s*;?")
_ENTRY = re.compile(r"TestVideoFile\s*\{\s*end\s*\+\s*1\s*\}\s*\.\s*gt_frame\s*=\s*\[([^\]]*)\]\s*;?")
_SPAN = re.compile(r"(\d+)(?:\s*:\s*(\d+))?")


def parse_ucsd_m(path: Path | str) -> list[tuple[int, list[tuple[int, int]]]]:
    """Parse UCSD's ``UCSDped1.m``/``UCSDped2.m``: ``(line number, [(first, last), ...])`` per test clip.

    The file reads ``TestVideoFile = {};`` then one ``TestVideoFile{end+1}.gt_frame = [60:152];`` line per test
    clip, in folder order; ranges are 1-based and inclusive, several per clip are comma-separated
    (``[5:90, 140:200]``). Blank lines and ``%`` comments are skipped; any other line is an error naming it.
    """
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise LabelError(f"{path}: cannot read UCSD frame-label file ({err})") from err
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("%", 1)[0].strip()
        if not line or _HEADER.fullmatch(line):
            continue
        match = _ENTRY.fullmatch(line)
        if match is None:
            raise LabelError(f"{path} line {number}: cannot parse {raw.strip()!r}; expected {M_LINE!r}")
        entries.append((number, _parse_spans(match.group(1), path, number)))
    if not entries:
        raise LabelError(f"{path}: no gt_frame lines; expected one {M_LINE!r} line per test clip")
    return entries


def _parse_spans(body: str, path: Path, number: int) -> list[tuple[int, int]]:
    spans = []
    for part in (p.strip() for p in body.split(",")):
        if not part:
            continue
        match = _SPAN.fullmatch(part)
        if match is None:
            raise LabelError(f"{path} line {number}: cannot parse range {part!r}; expected 'a:b' or 'a'")
        a, b = int(match.group(1)), int(match.group(2) or match.group(1))
        if a > b:
            raise LabelError(f"{path} line {number}: range {part!r} ends before it starts; expected a <= b")
        spans.append((a, b))
    return spans


def read_ped1(root: Path | str, split: str = "test") -> list[Clip]:
    """Clips of one split of UCSD Ped1 (34 training, 36 test clips of 200 frames); see :func:`read_ucsd`."""
    return read_ucsd(root, split, "ped1")


def read_ped2(root: Path | str, split: str = "test") -> list[Clip]:
    """Clips of one split of UCSD Ped2 (16 training, 12 test clips); see :func:`read_ucsd`."""
    return read_ucsd(root, split, "ped2")


def read_ucsd(root: Path | str, split: str, variant: Variant) -> list[Clip]:
    """Clips of one split of a UCSD Ped1/Ped2 tree (ROOT is the ``UCSDped1``/``UCSDped2`` folder).

    Expected tree (``N`` = 1 or 2)::

        ROOT/
          Train/Train001/001.tif ...
          Test/Test001/001.tif ...
          Test/Test001_gt/001.bmp ...   pixel ground truth: every Ped2 clip, only some Ped1 clips
          Test/UCSDpedN.m               TestVideoFile = {};
                                        TestVideoFile{end+1}.gt_frame = [60:152];       (one line per clip,
                                        TestVideoFile{end+1}.gt_frame = [5:90, 140:200]; in folder order)

    Frame labels come from ``UCSDpedN.m``; without it, from the ``_gt`` masks (a frame is anomalous when its
    mask has a pixel set), which then every test clip needs. Where both exist they must agree. Clips without a
    ``_gt`` folder have no pixel ground truth (``pixel_mask=None``).

    A root in the research layout (``training/frames/01/000.jpg``, ``testing/frames/``, ``pedN.mat`` or
    ``frame_labels_pedN.npy``; or the folder holding its ``pedN/``) is read by :func:`vad.io.research.read_research`.
    """
    research = research_root(variant, root)
    if research is not None:
        return read_research(variant, research, split)
    root = require_dir(Path(root), f"UCSD {variant} root")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    top = "Train" if split == "train" else "Test"
    folder = find_dir(root, [top], f"UCSD {variant} {top} folder")
    dirs = sorted(
        (p for p in visible(folder) if p.is_dir() and re.fullmatch(rf"{top}\d+", p.name)), key=natural_key
    )
    if not dirs:
        raise DatasetLayoutError(f"{folder}: no clip folders; expected {top}001/001.tif ...")
    clips = []
    for d in dirs:
        gt = folder / f"{d.name}_gt"
        clips.append(frames_clip(d, name=d.name, pixel_mask=gt if gt.is_dir() else None))
    if split == "train":
        return clips
    m_file = folder / f"UCSD{variant}.m"
    table = _m_labels(m_file, clips) if m_file.is_file() else None
    out = []
    for i, clip in enumerate(clips):
        masks = _mask_labels(clip) if clip.pixel_mask is not None else None
        if table is None and masks is None:
            raise LabelError(
                f"{m_file}: frame-label file not found and no {clip.name}_gt mask folder for {clip.path}; "
                "expected one of them"
            )
        if table is not None and masks is not None:
            _check_agree(table[i], masks, clip, m_file)
        labels, source = (table[i], m_file) if table is not None else (masks, clip.pixel_mask)
        out.append(with_labels(clip, labels, source))
    return out


def _m_labels(m_file: Path, clips: list[Clip]) -> list[np.ndarray]:
    """Per-clip frame labels from a UCSD ``.m`` file, its n-th line for the n-th clip folder."""
    entries = parse_ucsd_m(m_file)
    if len(entries) != len(clips):
        raise LabelError(
            f"{m_file}: {len(entries)} gt_frame lines for {len(clips)} test clip folders in {clips[0].path.parent}; "
            "expected one line per folder, in folder order"
        )
    return [
        spans_to_labels(spans, clip.num_frames, f"{m_file} line {number} ({clip.name})")
        for (number, spans), clip in zip(entries, clips, strict=True)
    ]


def _mask_labels(clip: Clip) -> np.ndarray:
    """Frame labels from a clip's ``_gt`` masks, after checking them against the clip (count and size)."""
    assert clip.pixel_mask is not None
    masks = load_mask_folder(clip.pixel_mask)
    check_mask_shape(clip, clip.pixel_mask, masks.shape)
    return masks.reshape(len(masks), -1).any(1).astype(np.uint8)


def _check_agree(m_labels: np.ndarray, mask_labels: np.ndarray, clip: Clip, m_file: Path) -> None:
    differ = np.flatnonzero(m_labels != mask_labels) + 1  # 1-based, as in the files
    if differ.size:
        shown = ", ".join(map(str, differ[:10])) + (", ..." if differ.size > 10 else "")
        raise LabelError(
            f"{m_file} and {clip.pixel_mask}: frame labels of {clip.name} disagree at {differ.size} frames "
            f"({shown}; 1-based): the .m file marks {int(m_labels.sum())} anomalous frames, the masks "
            f"{int(mask_labels.sum())}; expected the same frames"
        )
