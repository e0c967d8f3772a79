"""Label files: pixel ground truth in every format the readers meet (ShanghaiTech ``.npy``, Avenue ``.mat``, UCSD
mask folders), MATLAB variables, and the check of masks against their clip when a dataset is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vad.errors import LabelError
from vad.io.decode import read_image
from vad.io.records import Clip, list_images


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
        masks = load_mask_folder(path)
    elif path.suffix == ".npy":
        masks = np.load(path, mmap_mode="r")
    elif path.suffix == ".mat":
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


def load_mat(path: Path, variable: str, expected: str, **kwargs) -> np.ndarray:
    """Variable ``variable`` of MATLAB file ``path``; an unreadable file or a missing variable is a
    :class:`LabelError` naming the file and ``expected``."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), **kwargs)
    except (OSError, ValueError, NotImplementedError) as err:
        raise LabelError(f"{path}: cannot read MATLAB label file ({err})") from err
    if variable not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise LabelError(f"{path}: no {variable!r} variable; found {keys}; expected {expected}")
    return mat[variable]


def avenue_cells(path: Path) -> list[np.ndarray]:
    """The ``volLabel`` cells (one ``(H, W)`` mask per frame) of an Avenue ``N_label.mat`` file."""
    cells = np.asarray(load_mat(path, "volLabel", "Avenue's N_label.mat (volLabel: 1xT cell of HxW masks)"))
    out = [np.asarray(c) for c in cells.reshape(-1)] if cells.dtype == object else None
    if out is None or any(c.ndim != 2 for c in out):
        raise LabelError(f"{path}: volLabel of type {cells.dtype} and shape {cells.shape}; "
                         "expected a 1xT MATLAB cell of HxW masks")
    return out


def volume_shape(cells: list[np.ndarray], path: Path) -> tuple[int, int, int]:
    """``(T, H, W)`` of Avenue mask cells, which must share one size."""
    sizes = sorted({c.shape for c in cells})
    if len(sizes) != 1:
        raise LabelError(f"{path}: volLabel masks of several sizes {sizes[:4]}; expected one HxW for all frames")
    return (len(cells), *sizes[0])


def load_avenue_volume(path: Path) -> np.ndarray:
    """Pixel masks ``(T, H, W)`` uint8 from an Avenue ``N_label.mat`` file (``volLabel`` cell array)."""
    cells = avenue_cells(path)
    volume_shape(cells, path)
    return np.stack([c != 0 for c in cells]).astype(np.uint8)


def load_mask_folder(folder: Path) -> np.ndarray:
    """``(T, H, W)`` uint8 binary masks from a folder of mask images (UCSD ``_gt`` bmp files)."""
    paths = list_images(folder)
    if not paths:
        raise LabelError(f"{folder}: mask folder holds no images; expected 001.bmp ...")
    masks = [(read_image(p, "L") > 127).astype(np.uint8) for p in paths]
    for p, m in zip(paths, masks, strict=True):
        if m.shape != masks[0].shape:
            raise LabelError(f"{p}: mask size {m.shape} differs from {masks[0].shape} of {paths[0].name}")
    return np.stack(masks)
