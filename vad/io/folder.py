"""Raw input for users without a benchmark: one video, or a folder tree of videos and frame folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vad.errors import DatasetLayoutError
from vad.io.decode import as_clip
from vad.io.records import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Clip,
    frames_clip,
    natural_key,
    renamed,
    visible,
)

MAX_DEPTH = 16  # folders below the input that are searched for clips


def read_folder(path: Path | str) -> list[Clip]:
    """Unlabelled clips from ``path``.

    Accepted::

        clip.mp4                  one video file -> one clip
        FOLDER/000.jpg ...        a folder of frames -> one clip
        FOLDER/                   a folder tree of videos and/or frame folders -> one clip each
          cam1.avi
          cam2/000.jpg ...
          site/cam3/day.mp4
          site/cam4/day.mp4

    Clip names are file stems and folder names; where two sources in the tree share one, each is named by its path
    below ``path`` (``cam3_day``, ``cam4_day``). Folders without images or videos (``__MACOSX``) are skipped;
    symbolic links are followed once (a loop is not a clip).
    """
    path = Path(path)
    try:
        exists, is_file = path.exists(), path.is_file()
        real = path.resolve(strict=exists)
    except (OSError, RuntimeError) as err:  # a symbolic link loop
        raise DatasetLayoutError(f"{path}: cannot be read ({getattr(err, 'strerror', None) or err}); expected a "
                                 "video file or a folder of videos/frames") from None
    if not exists:
        raise DatasetLayoutError(f"{path}: input not found; expected a video file or a folder of videos/frames")
    if is_file:
        return [as_clip(path)]
    found: list[tuple[Path, Clip]] = []
    _walk(path, path, {real}, found, 0)
    if not found:
        raise DatasetLayoutError(
            f"{path}: no videos ({', '.join(sorted(VIDEO_EXTENSIONS))}) and no frame folders found"
        )
    return _unique_names(path, found)


def _walk(root: Path, folder: Path, seen: set[Path], found: list[tuple[Path, Clip]], depth: int) -> None:
    entries = sorted(visible(folder), key=natural_key)
    if any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in entries):
        found.append((folder, frames_clip(folder, name=folder.name if folder != root else root.name)))
        return
    for p in entries:
        try:
            real = p.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling link or a link loop
            continue
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
            found.append((p, as_clip(p)))
        elif p.is_dir() and real not in seen and depth < MAX_DEPTH:
            seen.add(real)
            _walk(root, p, seen, found, depth + 1)


def _unique_names(root: Path, found: list[tuple[Path, Clip]]) -> list[Clip]:
    """Stems where unique in the tree; else the path below ``root`` joined by ``_`` (and, should that collide
    too, a tag of the path)."""
    counts: dict[str, int] = {}
    for _, clip in found:
        counts[clip.name] = counts.get(clip.name, 0) + 1
    out, used = [], set()
    for source, clip in found:
        name = clip.name
        if counts[name] > 1:
            rel = source.relative_to(root).with_suffix("") if source != root else Path(root.name)
            name = "_".join(rel.parts)
        if name in used:
            name = f"{name}-{hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:6]}"
        used.add(name)
        out.append(renamed(clip, name))
    return out
