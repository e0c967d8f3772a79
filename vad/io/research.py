"""The research layout of the benchmarks: JPEG frame folders and one frame-label file, the way most video anomaly
detection code has distributed Ped1, Ped2, Avenue and ShanghaiTech since 2018 (ano_pred_cvpr2018, MNAD and later).

The original-archive readers (:mod:`vad.io.ucsd`, :mod:`vad.io.avenue`, :mod:`vad.io.shanghaitech`) call
:func:`research_root` first and read a root laid out this way with :func:`read_research` (ShanghaiTech's reader
reads it itself: its two layouts differ only in the training folder). :func:`describe_layout` says which one a root
is, for ``inspect``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vad.errors import DatasetLayoutError, LabelError
from vad.io.masks import load_mat
from vad.io.records import Clip, frames_clip, natural_key, spans_to_labels, visible, with_labels
from vad.io.validate import find_dir

RESEARCH_DATASETS = ("ped1", "ped2", "avenue", "shanghaitech")
GT_CELL = "gt: a 1xK cell, per test clip in folder order a 2xS array, one [first; last] column per anomalous span"
# Names a dataset's own folder goes by (case ignored), for a root one level above it.
_NAMES = {"ped1": ("ped1", "ucsdped1"), "ped2": ("ped2", "ucsdped2"), "avenue": ("avenue",),
          "shanghaitech": ("shanghaitech", "shanghai")}
# What the original archives hold (any of them at the root: it is read as the original archive).
_ORIGINAL = {
    "ped1": ("Train", "Test", "Test/UCSDped1.m"),
    "ped2": ("Train", "Test", "Test/UCSDped2.m"),
    "avenue": ("training_videos", "testing_videos", "testing_label_mask", "Avenue Dataset/training_videos",
               "Avenue Dataset/testing_videos", "ground_truth_demo/testing_label_mask", "avenue.mat",
               "ground_truth_demo/avenue.mat"),
    "shanghaitech": ("training/videos", "testing/frames", "testing/test_frame_mask", "testing/test_pixel_mask"),
}


def label_files(dataset: str, root: Path) -> tuple[Path, Path]:
    """The two frame-label files a research-layout root may hold: ``<name>.mat`` and ``frame_labels_<name>.npy``."""
    return root / f"{dataset}.mat", root / f"frame_labels_{dataset}.npy"


def _research_parts(dataset: str) -> tuple[str, ...]:
    if dataset == "shanghaitech":
        return "training/frames", "testing/frames", "testing/test_frame_mask", "testing/test_pixel_mask"
    return "training/frames", "testing/frames", *(p.name for p in label_files(dataset, Path()))


def _is_research(dataset: str, folder: Path) -> bool:
    if dataset == "shanghaitech":  # its own download has testing/frames too: only the training folder differs
        return (folder / "training" / "frames").is_dir() and not (folder / "training" / "videos").is_dir()
    return (folder / "training" / "frames").is_dir() or (folder / "testing" / "frames").is_dir()


def research_root(dataset: str, root: Path | str) -> Path | None:
    """The folder of ``dataset`` in the research layout, or ``None`` when ``root`` is not laid out that way.

    That folder is ``root`` itself when it holds ``training/frames`` or ``testing/frames`` (ShanghaiTech:
    ``training/frames`` instead of ``training/videos``), or the sub-folder named for the dataset (``ped2/`` or
    ``UCSDped2/``, case ignored) that does, when ``root`` is one level above it and holds nothing of the original
    archive.
    """
    root = Path(root)
    if dataset not in _NAMES or not root.is_dir():
        return None
    if _is_research(dataset, root):
        return root
    if any((root / p).exists() for p in _ORIGINAL[dataset]):
        return None
    found = sorted(p for p in visible(root)
                   if p.is_dir() and p.name.casefold() in _NAMES[dataset] and _is_research(dataset, p))
    if len(found) > 1:
        raise DatasetLayoutError(f"{root}: {' and '.join(map(str, found))} both hold {dataset} in the research layout "
                                 "(training/frames, testing/frames); pass the one you mean")
    return found[0] if found else None


def describe_layout(dataset: str, root: Path | str) -> str | None:
    """Which layout ``root`` is read in, and what of it is there: ``research (training/frames, testing/frames,
    ped2.mat)`` or ``original archive (Train, Test, Test/UCSDped2.m)``; ``None`` for ``folder`` (one layout)."""
    if dataset not in RESEARCH_DATASETS:
        return None
    root = Path(root)
    found = research_root(dataset, root)
    if found is None:
        parts = [p for p in _ORIGINAL[dataset] if (root / p).exists()]
        return "original archive" + (f" ({', '.join(parts)})" if parts else "")
    parts = [p for p in _research_parts(dataset) if (found / p).exists()]
    return f"research ({', '.join(parts)})" + ("" if found == root else f" in {found}")


def gt_spans(path: Path, expected: str = GT_CELL) -> list[list[tuple[int, int]]]:
    """Per entry of the ``gt`` cell of MATLAB file ``path``, its anomalous ``(first, last)`` frames (1-based,
    inclusive, as stored): each entry a 2xS array (any numeric type; the real ``ped2.mat`` holds uint8), one
    column per span; an empty entry is a clip without anomalies."""
    gt = np.asarray(load_mat(path, "gt", expected))
    out = []
    for k, cell in enumerate(gt.reshape(-1) if gt.dtype == object else [gt], start=1):
        a = np.asarray(cell)
        if a.size == 0:
            out.append([])
            continue
        if a.ndim == 1 and a.size == 2:
            a = a.reshape(2, 1)
        if (a.ndim != 2 or a.shape[0] != 2 or not np.issubdtype(a.dtype, np.number)
                or not np.array_equal(a, np.round(a))):
            raise LabelError(f"{path}: gt entry {k} is a {a.dtype} array of shape {a.shape}; expected {expected} "
                             "(whole frame numbers)")
        out.append([(int(s), int(e)) for s, e in a.T])  # int(): uint8 arithmetic would wrap
    return out


def read_research(dataset: str, root: Path | str, split: str = "test") -> list[Clip]:
    """Clips of one split of Ped1, Ped2 or Avenue in the research layout (ROOT is the ``<name>`` folder).

    Expected tree (Ped2 shown; Ped1 and Avenue alike, with ``ped1``/``avenue`` in the file names)::

        ROOT/
          training/frames/01/000.jpg ...   normal training clips, one folder each (frames in natural order,
                                           numbered from 0 or 1)
          testing/frames/01/000.jpg ...    test clips
          ped2.mat                         gt: a 1xK cell, per test clip in folder order a 2xS array, one
                                           [first; last] column per anomalous span, 1-based inclusive
          frame_labels_ped2.npy            or (and): (N,) or (1, N) 0/1 labels of every test frame, the clips'
                                           labels concatenated in folder order

    Either label file will do; where both exist they must agree. A label file that does not fit the frame folders
    (another number of gt entries than test clip folders, a span past its clip's last frame, another total than
    the test frames) is a :class:`LabelError` naming the file, the folder and what was expected. The layout has
    no pixel ground truth (``pixel_mask=None``).
    """
    root = Path(root)
    if dataset not in RESEARCH_DATASETS or dataset == "shanghaitech":
        raise ValueError(f"dataset {dataset!r}: read_research reads ped1, ped2 and avenue (ShanghaiTech: "
                         "read_shanghaitech reads both its layouts)")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    top = "training" if split == "train" else "testing"
    folder = find_dir(root, [f"{top}/frames"], f"{dataset} {split} frames folder (research layout)")
    dirs = sorted((p for p in visible(folder) if p.is_dir()), key=natural_key)
    if not dirs:
        raise DatasetLayoutError(f"{folder}: no clip folders; expected one folder of frames per clip "
                                 f"({top}/frames/01/000.jpg ...)")
    clips = [frames_clip(d, name=d.name) for d in dirs]
    if split == "train":
        return clips
    labels, source = _test_labels(dataset, root, clips, folder)
    return [with_labels(c, lab, source) for c, lab in zip(clips, labels, strict=True)]


def _test_labels(dataset: str, root: Path, clips: list[Clip], folder: Path) -> tuple[list[np.ndarray], Path]:
    """Per test clip, its frame labels from ``<name>.mat`` and/or ``frame_labels_<name>.npy``, and the file used."""
    mat, npy = label_files(dataset, root)
    tables = {}
    if mat.is_file():
        tables[mat] = _mat_labels(mat, clips, folder)
    if npy.is_file():
        tables[npy] = _npy_labels(npy, clips, folder)
    if not tables:
        raise LabelError(f"no frame labels for the test clips in {folder}: looked for {mat} and {npy}; expected one "
                         f"of them ({mat.name}: {GT_CELL}; {npy.name}: every test frame's 0/1 label)")
    if len(tables) == 2:
        _check_agree(tables[mat], tables[npy], clips, mat, npy)
    source = next(iter(tables))
    return tables[source], source


def _mat_labels(path: Path, clips: list[Clip], folder: Path) -> list[np.ndarray]:
    spans = gt_spans(path)
    if len(spans) != len(clips):
        raise LabelError(f"{path}: {len(spans)} gt entries for the {len(clips)} test clip folders in {folder}; "
                         "expected one entry per folder, in folder order")
    return [spans_to_labels(s, c.num_frames, f"{path} gt entry {k} (test clip {c.path}, {c.num_frames} frames)")
            for k, (s, c) in enumerate(zip(spans, clips, strict=True), start=1)]


def _npy_labels(path: Path, clips: list[Clip], folder: Path) -> list[np.ndarray]:
    try:
        labels = np.load(path)
    except (OSError, ValueError) as err:
        raise LabelError(f"{path}: cannot read frame labels ({err}); expected a .npy array") from err
    if labels.ndim == 2 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 1:
        raise LabelError(f"{path}: frame labels of shape {labels.shape}; expected (N,) or (1, N): every test frame's "
                         "0/1 label, the clips concatenated in folder order")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise LabelError(f"{path}: frame labels must be 0 or 1; got values {np.unique(labels)[:10]}")
    counts = [c.num_frames for c in clips]
    if len(labels) != sum(counts):
        more = " (labels for more clips than this copy holds?)" if len(labels) > sum(counts) else ""
        raise LabelError(f"{path}: {len(labels)} frame labels for the {sum(counts)} frames of the {len(clips)} test "
                         f"clip folders in {folder}{more}; expected one label per frame, the clips concatenated in "
                         "folder order")
    return np.split(labels, np.cumsum(counts)[:-1])


def _check_agree(a: list[np.ndarray], b: list[np.ndarray], clips: list[Clip], mat: Path, npy: Path) -> None:
    for x, y, clip in zip(a, b, clips, strict=True):
        differ = np.flatnonzero(x != y) + 1  # 1-based, as in the .mat
        if differ.size:
            shown = ", ".join(map(str, differ[:10])) + (", ..." if differ.size > 10 else "")
            raise LabelError(f"{mat} and {npy}: frame labels of test clip {clip.name} ({clip.path}) disagree at "
                             f"{differ.size} frames ({shown}; 1-based); expected the same labels: keep the one you "
                             "mean and move the other away")
