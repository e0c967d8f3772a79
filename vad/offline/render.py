"""The render stage: one annotated H.264 MP4 per scored clip (``RUN/videos/<clip>.mp4``).

Each output frame is the source frame with the anomaly heatmap blended over it (or beside it, with
``render.layout=side_by_side``), and below it a score strip: the clip's smoothed score curve (bright up to the
current frame), the event threshold, the ground-truth anomalous spans when the clip is labelled, and a cursor.
While the frame is inside a detected event (the same events as ``events.csv``) the frame gets a red border
and an ``ANOMALY`` tag.

Frames are decoded, drawn and encoded batch by batch, so memory stays bounded whatever the clip length. The
heatmap's colour scale is fixed per model from normal data only: transparent at the median normal frame score,
``1 / render.heat_range`` of the way up the colour map at the threshold (two thirds by default: yellow in jet).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

from vad.atomic import atomic_path
from vad.config import EvalConfig, PostprocessConfig, RenderConfig
from vad.errors import UsageError, VadError
from vad.heatmap import RED, blend, colormap_lut, font, mark_anomaly
from vad.io.decode import as_clip, iter_frames
from vad.io.encode import VideoWriter
from vad.metrics import label_events
from vad.offline.evaluate import ScoredRun, clip_events, load_scored
from vad.progress import progress_bar
from vad.runtime.postprocess import event_frames
from vad.runtime.reference import heat_scale

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0


class RenderError(VadError):
    """A clip cannot be rendered (source changed since scoring, bad settings)."""


class StripPainter:
    """The score strip of one clip, drawn once; ``strip(t)`` returns the ``(S, W, 3)`` uint8 strip at frame t."""

    def __init__(self, scores: np.ndarray, threshold: float, labels: np.ndarray | None, events: Iterable,
                 width: int, height: int) -> None:
        self.n, self.w, self.h = len(scores), width, height
        top, bottom = 14, height - 4
        ymin = min(float(np.min(scores)), threshold, 0.0)  # scores may be negative (RSTPM's log-odds)
        ymax = max(float(np.max(scores)), threshold)
        ymax += 0.1 * (ymax - ymin) or 1.0
        xs = np.linspace(0, width - 1, self.n) if self.n > 1 else np.zeros(1)
        to_y = lambda v: bottom - (v - ymin) / (ymax - ymin) * (bottom - top)  # noqa: E731
        self.xs = xs.round().astype(int)

        def paint(curve_colour, fill_alpha) -> np.ndarray:
            img = Image.new("RGB", (width, height), (24, 24, 28))
            draw = ImageDraw.Draw(img, "RGBA")
            if labels is not None:  # ground-truth spans as a translucent band
                for a, b in label_events(labels):
                    draw.rectangle([xs[a], top, xs[b - 1] + 1, bottom], fill=(255, 200, 0, 60))
            for e in events:
                draw.rectangle([xs[e.start], bottom - 3, xs[e.end] + 1, bottom], fill=(*RED, 255))
            pts = list(zip(xs.tolist(), to_y(scores).tolist(), strict=True))
            if len(pts) > 1:
                draw.polygon([(0, bottom), *pts, (width - 1, bottom)], fill=(*curve_colour, fill_alpha))
                draw.line(pts, fill=curve_colour, width=2)
            ty = to_y(threshold)
            for x0 in range(0, width, 12):  # dashed threshold line
                draw.line([(x0, ty), (min(x0 + 6, width - 1), ty)], fill=(255, 80, 80), width=1)
            return np.asarray(img)

        self.past = paint((120, 220, 255), 70)
        self.future = paint((90, 90, 100), 40)
        self.font = font(11)
        self.legend = "score (smoothed)   -- threshold" + ("   ground truth" if labels is not None else "")

    def strip(self, t: int, text: str) -> np.ndarray:
        x = int(self.xs[min(t, self.n - 1)])
        out = self.future.copy()
        out[:, : x + 1] = self.past[:, : x + 1]
        out[:, x : x + 2] = 255  # cursor
        img = Image.fromarray(out)
        draw = ImageDraw.Draw(img)
        draw.text((4, 1), text, fill=(235, 235, 235), font=self.font)
        if draw.textlength(text, font=self.font) + draw.textlength(self.legend, font=self.font) + 24 < self.w:
            draw.text((self.w - 6, 1), self.legend, fill=(170, 170, 170), font=self.font, anchor="ra")
        return np.asarray(img)


def render_clip(s: ScoredRun, name: str, cfg: RenderConfig, ev: EvalConfig, out: Path,
                bar: tqdm | None = None) -> Path:
    """Render clip ``name`` of scored run ``s`` to ``out`` (written atomically); return ``out``. ``bar``: a
    progress bar to advance by the frames written. ``cfg`` was checked when it loaded. When rendering fails, a
    video left at ``out`` by an earlier render is deleted: it no longer shows what was asked for."""
    try:
        return _render_clip(s, name, cfg, ev, out, bar)
    except Exception:
        out.unlink(missing_ok=True)
        raise


def _clip_maps(s: ScoredRun, name: str, n: int, layout: str, rescore: str) -> np.ndarray | None:
    """Clip ``name``'s saved anomaly maps (memory-mapped), ``None`` without them; refused when the layout needs them
    or their count is not the clip's ``n`` frames."""
    map_path = s.folder.maps(name)
    maps = np.load(map_path, mmap_mode="r") if map_path.is_file() else None
    if maps is None and layout == "side_by_side":
        raise RenderError(f"render.layout=side_by_side needs the anomaly maps, and {map_path} does not exist; "
                          f"score with --set score.save_maps=true")
    if maps is not None and len(maps) != n:
        raise RenderError(f"{map_path}: {len(maps)} maps for clip {name}, which has {n} frames; {rescore}")
    return maps


def _heat(maps: np.ndarray, size: tuple[int, int], low: float, high: float) -> torch.Tensor:
    """Maps ``(B, h, w)`` -> heat in [0, 1] at the frames' ``size``, ``low`` .. ``high`` the colour scale's ends."""
    m = torch.from_numpy(np.asarray(maps, dtype=np.float32)).unsqueeze(1)
    m = F.interpolate(m, size=size, mode="bilinear", align_corners=False).squeeze(1)
    return ((m - low) / (high - low)).clamp(0, 1)


def _render_clip(s: ScoredRun, name: str, cfg: RenderConfig, ev: EvalConfig, out: Path, bar: tqdm | None) -> Path:
    info = s.manifest[name]
    clip = as_clip(Path(info.path))
    n = info.frames
    event_fps = s.fps(name, ev.fps)  # the rate events.csv times use; shown in the strip as well
    fps = cfg.fps or event_fps or DEFAULT_FPS
    found = clip_events(s, name, ev)
    in_event = event_frames(n, found)
    low, high = heat_scale(s.reference(name).scores, s.threshold(name), cfg.heat_range)  # maps: the model's units
    rescore = f"score it again (vad score --run {s.run} --input {info.path}), then render"
    maps = _clip_maps(s, name, n, cfg.layout, rescore)
    lut = colormap_lut(cfg.colormap)
    scores, threshold = s.shown(name)  # the strip: calibrated (1.0 = threshold) when the run's scores are

    writer = painter = None
    done, ok = 0, False
    with atomic_path(out, ".mp4") as tmp, closing(iter_frames(clip, batch_size=16, stop=n)) as batches:
        try:
            for first, frames in batches:
                b, _, h, w = frames.shape
                if first + b > n:
                    raise RenderError(f"{clip.path}: has more frames than the {n} scored for clip {name}; {rescore}")
                heat = None if maps is None else _heat(maps[first : first + b], (h, w), low, high)
                pic = blend(frames, heat, lut, cfg.opacity, cfg.layout, 1 / cfg.heat_range)
                if writer is None:
                    width = pic.shape[2] + pic.shape[2] % 2
                    height = h + cfg.strip_height + (h + cfg.strip_height) % 2
                    writer = VideoWriter(tmp, width, height, fps, cfg.crf, cfg.preset)
                    painter = StripPainter(scores, threshold, s.labels.get(name), found, width, cfg.strip_height)
                    tag_font = font(max(12, h // 24))
                pic = pic.round().clamp(0, 255).to(torch.uint8).numpy()
                for i in range(b):
                    t = first + i
                    canvas = np.zeros((writer.stream.height, writer.stream.width, 3), np.uint8)
                    canvas[:h, : pic.shape[2]] = pic[i]
                    when = f"  {t / event_fps:.1f}s" if event_fps else ""
                    label = f"{name}  {t + 1}/{n}{when}  score {scores[t]:.3f}"
                    canvas[h : h + cfg.strip_height] = painter.strip(t, label)
                    if in_event[t]:
                        mark_anomaly(canvas, h, tag_font)
                    writer.write(canvas)
                    done += 1
                if bar is not None:
                    bar.update(b)
            ok = True
        finally:
            if writer is not None:
                writer.close(flush=ok)
        if done != n:  # inside the atomic block: a short video never replaces the output
            raise RenderError(f"{clip.path}: decoded {done} frames but clip {name} was scored with {n}; {rescore}")
    return out


def render_run(run: Path | str, post: PostprocessConfig, ev: EvalConfig, cfg: RenderConfig,
               clips: Sequence[str] | None = None, progress: bool = True) -> list[Path]:
    """Render the scored clips of ``run`` (all, or the named ones) to ``run/videos/<clip>.mp4``."""
    s = load_scored(run, post, ev)
    names = list(s.manifest) if not clips else list(clips)
    unknown = [c for c in names if c not in s.manifest]
    if unknown:
        raise UsageError(f"clip(s) {unknown} not scored in {s.run}; scored clips: {sorted(s.manifest)}")
    if not s.folder.maps_dir.is_dir() and progress:
        log.info(f"note: {s.folder.maps_dir} does not exist, so the videos show scores without heatmaps; "
                 "score with --set score.save_maps=true for heatmaps")
    t0, paths = time.perf_counter(), []
    frames = sum(s.manifest[name].frames for name in names)
    with progress_bar(total=frames, desc="rendering", unit="frame", progress=progress) as bar:
        for name in names:
            paths.append(render_clip(s, name, cfg, ev, s.folder.video(name), bar))
    if progress:
        secs = time.perf_counter() - t0
        log.info(f"rendered {len(paths)} video(s), {frames} frames in {secs:.1f}s ({frames / secs:.0f} frames/s) "
                 f"-> {s.folder.videos}")
    return paths
