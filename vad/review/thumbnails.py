"""The review page's event thumbnails: ``RUN/review/<event>.jpg``, each event's peak frame with its heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vad.atomic import atomic_path
from vad.config import EvalConfig, RenderConfig
from vad.errors import VadError
from vad.heatmap import heat_picture
from vad.io.decode import as_clip, iter_frames
from vad.runs import ClipRecord
from vad.runtime.postprocess import Event

if TYPE_CHECKING:
    from vad.review.view import ScoredRunView

THUMB_WIDTH = 320


def write_thumbnails(s: ScoredRunView, per_clip: dict[str, list[Event]], ev: EvalConfig,
                     render: RenderConfig) -> dict[str, str]:
    """``RUN/review/<event>.jpg``: each event's peak frame with its heatmap (as the renderer draws it), about
    320 px wide; thumbnails of events no longer found are deleted. Returns, for the events left without one, why
    (their source is gone or cannot be decoded)."""
    folder, missing, keep = s.folder, {}, set()
    for name, found in per_clip.items():
        if not found:
            continue
        record = s.manifest[name]
        try:
            frames = _peak_frames(record, sorted({e.peak_frame for e in found}))
        except (OSError, VadError) as err:
            why = ("no thumbnail: the source is gone" if not Path(record.path).exists() else
                   f"no thumbnail: the source cannot be decoded ({err})")
            missing.update({e.id: why for e in found})
            continue
        path = folder.maps(name)
        maps = np.load(path, mmap_mode="r") if path.is_file() else None
        maps = maps if maps is not None and len(maps) == record.frames else None
        scale = s.reference(name).heat_scale(ev.threshold_percentile, render.heat_range)
        for e in found:
            pic = Image.fromarray(heat_picture(frames[e.peak_frame], None if maps is None else maps[e.peak_frame],
                                               scale, render))
            pic = pic.resize((THUMB_WIDTH, max(1, round(pic.height * THUMB_WIDTH / pic.width))), Image.BILINEAR)
            with atomic_path(folder.thumbnail(e.id), ".jpg") as tmp:
                pic.save(tmp, format="JPEG", quality=85)
            keep.add(folder.thumbnail(e.id))
    for old in folder.thumbnails.glob("*.jpg") if folder.thumbnails.is_dir() else []:
        if old not in keep:
            old.unlink()
    return missing


def _peak_frames(record: ClipRecord, wanted: list[int]) -> dict[int, np.ndarray]:
    """``{frame: (H, W, 3) uint8}`` of the source of ``record``: a frame folder's files one by one, a video's in
    one pass from the first frame wanted to the last (a video decodes from its start whatever is asked)."""
    clip = as_clip(Path(record.path))
    spans = [(k, k + 1) for k in wanted] if record.kind == "frames" else [(wanted[0], wanted[-1] + 1)]
    out = {}
    for a, b in spans:
        for first, batch in iter_frames(clip, start=a, stop=b, batch_size=16):
            out.update({first + i: f.permute(1, 2, 0).numpy() for i, f in enumerate(batch) if first + i in wanted})
    return out
