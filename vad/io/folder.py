"""Raw input for users without a benchmark: one video, or a folder of videos and/or frame folders."""

from __future__ import annotations

from pathlib import Path

from vad.errors import DatasetLayoutError
from vad.io.decode import as_clip
from vad.io.records import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, Clip, frames_clip, list_images, natural_key, visible


def read_folder(path: Path | str) -> list[Clip]:
    """Unlabelled clips from ``path``.

    Accepted::

        clip.mp4                  one video file -> one clip
        FOLDER/000.jpg ...        a folder of frames -> one clip
        FOLDER/                   a folder of videos and/or frame folders -> one clip each
          cam1.avi
          cam2/000.jpg ...

    Clip names are file stems / folder names and must be unique; sub-folders without images are skipped.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetLayoutError(f"{path}: input not found; expected a video file or a folder of videos/frames")
    if path.is_file():
        clip = as_clip(path)
        return [clip]
    entries = sorted(visible(path), key=natural_key)
    if any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in entries):
        return [frames_clip(path, name=path.name)]
    clips = []
    for p in entries:
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
            clips.append(as_clip(p))
        elif p.is_dir() and list_images(p):  # folders without frames (e.g. __MACOSX) are not clips
            clips.append(frames_clip(p, name=p.name))
    if not clips:
        raise DatasetLayoutError(
            f"{path}: no videos ({', '.join(sorted(VIDEO_EXTENSIONS))}) and no frame folders found"
        )
    names = [c.name for c in clips]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetLayoutError(f"{path}: clip names {dupes} occur twice (e.g. a.mp4 and a/); rename one")
    return clips
