"""Seeded synthetic surveillance scene in the ShanghaiTech layout: the project's embedded demo data.

A fixed camera looks at a textured campus (grass, a paved path, a building, trees, lamp posts). Walkers of
varied size and clothing cross along the path with swinging legs; their number varies over time, so the
amount of foreground in a frame says little on its own. Sensor noise and a slow illumination drift run
through every frame. Test clips add anomalies with exact pixel masks:

- ``vehicle``: a car-like object driving along the path about five times walking speed;
- ``cyclist``: a rider on two wheels, three to four times walking speed;
- ``object``: an out-of-place object (a crate, a cart) that appears on the ground and stays;
- ``runner``: a motion anomaly: one of the walkers breaks into a run along the path at four to six times walking
  speed (drawn exactly like the walkers: same palette, sizes, swinging legs). Frame by frame nothing sets them
  apart from a walker.

Anomalies use the walkers' colour palette and sizes close to theirs, so they are not separable by raw
pixel statistics (mean intensity, foreground area); see ``tests/test_synthetic.py``.

Output (same as :func:`vad.io.read_shanghaitech` expects)::

    OUT/training/videos/01_001.avi ...        normal videos (MPEG-4 Part 2)
    OUT/testing/frames/01_0001/000.jpg ...    test clips as JPEG frames
    OUT/testing/test_frame_mask/01_0001.npy   (T,) uint8
    OUT/testing/test_pixel_mask/01_0001.npy   (T, H, W) uint8
    OUT/scene.json                            the config and the table of anomalous events
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from vad.atomic import atomic_path, write_text

PALETTE = np.array(
    [[200, 40, 40], [40, 70, 170], [30, 30, 35], [230, 230, 225], [60, 130, 60], [220, 190, 60],
     [120, 70, 150], [150, 95, 50], [90, 90, 95], [230, 120, 40], [70, 150, 190], [170, 60, 110]],
    dtype=np.int64,
)
SKIN = np.array([[235, 200, 170], [200, 150, 110], [150, 100, 70], [110, 75, 50]], dtype=np.int64)
ANOMALY_KINDS = ("vehicle", "cyclist", "object", "runner")


@dataclass(frozen=True)
class SceneConfig:
    """Size of the generated dataset. The defaults train and score in minutes on 2 CPU cores."""

    height: int = 180
    width: int = 320
    fps: int = 15
    train_videos: int = 4
    train_frames: int = 120
    test_clips: int = 4
    test_frames: int = 120
    walkers_per_frame: float = 5.0
    seed: int = 0
    anomaly_kinds: tuple[str, ...] = field(default=ANOMALY_KINDS)

    def __post_init__(self) -> None:
        if self.height < 64 or self.width < 64:
            raise ValueError(f"scene must be at least 64x64; got {self.height}x{self.width}")
        if self.test_frames < 40 or self.train_frames < 1:
            raise ValueError("test clips need at least 40 frames and training videos at least 1")
        bad = set(self.anomaly_kinds) - set(ANOMALY_KINDS)
        if bad or not self.anomaly_kinds:
            raise ValueError(f"unknown anomaly kinds {sorted(bad)}; expected a subset of {ANOMALY_KINDS}")


# ----------------------------------------------------------------------------- the static scene


@dataclass(frozen=True)
class _Layout:
    """Geometry shared by the background and the movers: a path band y = y0 + slope * x."""

    width: int
    height: int
    path_y0: float
    path_slope: float
    path_half: float

    def path_y(self, x: float) -> float:
        return self.path_y0 + self.path_slope * x

    def scale(self, y: float) -> float:
        """Perspective: things further down the frame are nearer and larger."""
        return 0.55 + 0.75 * y / self.height


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigmas=(1.0, 4.0, 12.0)) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    for i, s in enumerate(sigmas):
        n = gaussian_filter(rng.standard_normal(shape).astype(np.float32), s)
        out += n / (n.std() + 1e-6) / (i + 1)
    return out / (out.std() + 1e-6)


def _background(rng: np.random.Generator, lay: _Layout) -> np.ndarray:
    h, w = lay.height, lay.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tex = _noise(rng, (h, w))
    img = np.empty((h, w, 3), np.float32)
    img[:] = (78, 120, 62)  # grass
    img += tex[..., None] * np.array([10, 16, 8], np.float32)
    # paved path with tiles
    d = yy - lay.path_y(xx)
    on_path = np.abs(d) < lay.path_half * lay.scale(yy)
    tiles = ((xx // 14 + (yy // 7) % 2) % 2).astype(np.float32)
    paving = np.array([150, 146, 138], np.float32) + 8 * tiles[..., None] + 6 * tex[..., None]
    img = np.where(on_path[..., None], paving, img)
    kerb = np.abs(np.abs(d) - lay.path_half * lay.scale(yy)) < 1.2
    img[kerb] = (185, 182, 175)
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    # building along the top edge with a window grid
    top = int(h * 0.22)
    draw.rectangle([0, 0, w, top], fill=(168, 150, 130))
    draw.rectangle([0, top - 3, w, top], fill=(110, 100, 92))
    for x in range(6, w - 10, 22):
        for y in range(4, top - 12, 14):
            draw.rectangle([x, y, x + 12, y + 8], fill=(60, 75, 95) if rng.random() > 0.2 else (200, 200, 170))
    # trees, lamp posts and benches off the path
    for _ in range(max(2, w // 80)):
        x = rng.uniform(10, w - 10)
        y = lay.path_y(x) + rng.choice([-1, 1]) * lay.path_half * 2.2 + rng.uniform(-6, 6)
        y = float(np.clip(y, top + 16, h - 10))
        r = 14 * lay.scale(y)
        draw.rectangle([x - 2, y, x + 2, y + r], fill=(80, 55, 35))
        crown = (int(rng.integers(25, 55)), int(rng.integers(65, 100)), int(rng.integers(25, 50)))
        draw.ellipse([x - r, y - 1.6 * r, x + r, y + 0.3 * r], fill=crown)
    for x in np.linspace(w * 0.15, w * 0.9, 3):
        y = lay.path_y(x) - lay.path_half * lay.scale(lay.path_y(x)) - 3
        s = lay.scale(y)
        draw.rectangle([x - 1, y - 40 * s, x + 1, y], fill=(45, 45, 50))
        draw.ellipse([x - 4 * s, y - 44 * s, x + 4 * s, y - 38 * s], fill=(230, 230, 200))
    for _ in range(2):
        x = rng.uniform(0.1 * w, 0.9 * w)
        y = lay.path_y(x) + lay.path_half * lay.scale(lay.path_y(x)) + 6
        s = lay.scale(y)
        draw.rectangle([x - 12 * s, y, x + 12 * s, y + 4 * s], fill=(120, 80, 45))
    out = np.asarray(pil, np.float32)
    return gaussian_filter(out, (0.6, 0.6, 0))  # soften drawn edges like a real lens


# ----------------------------------------------------------------------------- movers


@dataclass
class _Walker:
    x: float
    lane: float  # offset from the path centre, in path half-widths
    speed: float  # px/frame, signed
    height: float  # px at scale 1
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    skin: tuple[int, int, int]
    phase: float
    bag: bool

    def pos(self, lay: _Layout) -> tuple[float, float]:
        y = lay.path_y(self.x)
        return self.x, y + self.lane * lay.path_half * lay.scale(y)


def _color(rng: np.random.Generator, table: np.ndarray) -> tuple[int, int, int]:
    c = table[rng.integers(len(table))] + rng.integers(-18, 19, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _new_walker(rng: np.random.Generator, lay: _Layout, x: float | None = None) -> _Walker:
    direction = rng.choice([-1.0, 1.0])
    if x is None:
        x = -15.0 if direction > 0 else lay.width + 15.0
    return _Walker(
        x=float(x), lane=float(rng.uniform(-0.8, 0.8)), speed=float(direction * rng.uniform(0.7, 1.6)),
        height=float(rng.uniform(24, 40)), shirt=_color(rng, PALETTE), trousers=_color(rng, PALETTE[[1, 2, 7, 8]]),
        skin=_color(rng, SKIN), phase=float(rng.uniform(0, 2 * math.pi)), bag=bool(rng.random() < 0.3),
    )


def _draw_person(draw: ImageDraw.ImageDraw, x: float, y: float, hgt: float, w: _Walker, legs: bool) -> None:
    """A person standing at foot point (x, y), ``hgt`` px tall."""
    head = hgt * 0.13
    hip_y, shoulder_y = y - hgt * 0.47, y - hgt * 0.80
    half = hgt * 0.12
    if legs:
        swing = math.sin(w.phase) * hgt * 0.14
        lw = max(2, int(hgt * 0.08))
        draw.line([x, hip_y, x + swing, y], fill=w.trousers, width=lw)
        draw.line([x, hip_y, x - swing, y], fill=w.trousers, width=lw)
    draw.rounded_rectangle([x - half, shoulder_y, x + half, hip_y + 2], radius=half * 0.6, fill=w.shirt)
    draw.ellipse([x - head, shoulder_y - 2 * head, x + head, shoulder_y], fill=w.skin)
    if w.bag:
        draw.rectangle([x + half - 1, hip_y - hgt * 0.12, x + half + hgt * 0.1, hip_y + hgt * 0.02], fill=(50, 40, 30))


def _draw_walker(draw: ImageDraw.ImageDraw, w: _Walker, lay: _Layout) -> None:
    x, y = w.pos(lay)
    _draw_person(draw, x, y, w.height * lay.scale(y), w, legs=True)


@dataclass
class _Anomaly:
    kind: str
    start: int
    x: float
    y_off: float
    speed: float
    size: float
    color: tuple[int, int, int]
    rider: _Walker | None = None
    end: int | None = None  # last frame (exclusive) for static objects

    def draw(self, draw: ImageDraw.ImageDraw, t: int, lay: _Layout) -> None:
        x = self.x + self.speed * (t - self.start)
        y = lay.path_y(x) + self.y_off * lay.path_half * lay.scale(lay.path_y(x))
        s = lay.scale(y) * self.size
        if self.kind == "vehicle":
            body_h, body_w = 12 * s, 40 * s
            draw.rounded_rectangle([x - body_w / 2, y - body_h - 4 * s, x + body_w / 2, y - 4 * s],
                                   radius=3 * s, fill=self.color)
            draw.polygon([(x - body_w * 0.3, y - body_h - 4 * s), (x - body_w * 0.18, y - body_h - 12 * s),
                          (x + body_w * 0.2, y - body_h - 12 * s), (x + body_w * 0.32, y - body_h - 4 * s)],
                         fill=tuple(int(c * 0.8) for c in self.color))
            draw.rectangle([x - body_w * 0.16, y - body_h - 10 * s, x + body_w * 0.18, y - body_h - 5 * s],
                           fill=(150, 175, 195))
            for wx in (x - body_w * 0.3, x + body_w * 0.3):
                draw.ellipse([wx - 5 * s, y - 9 * s, wx + 5 * s, y + 1 * s], fill=(25, 25, 28))
        elif self.kind == "cyclist":
            r = 6 * s
            for wx in (x - 9 * s, x + 9 * s):
                draw.ellipse([wx - r, y - 2 * r, wx + r, y], outline=(30, 30, 30), width=max(1, int(1.5 * s)))
            draw.line([x - 9 * s, y - r, x, y - 2.4 * r, x + 9 * s, y - r], fill=self.color, width=max(1, int(2 * s)))
            assert self.rider is not None
            _draw_person(draw, x, y - r * 1.2, 26 * s, self.rider, legs=False)
        elif self.kind == "runner":  # a walker's looks, legs swinging at its running pace
            assert self.rider is not None
            runner = replace(self.rider, phase=self.rider.phase + abs(self.speed) * 0.35 * (t - self.start))
            _draw_person(draw, x, y, runner.height * lay.scale(y), runner, legs=True)
        else:  # object: a crate or a cart standing on the ground
            bw, bh = 16 * s, 13 * s
            draw.rectangle([x - bw / 2, y - bh, x + bw / 2, y], fill=self.color)
            for k in range(1, 4):
                yk = y - bh * k / 4
                draw.line([x - bw / 2, yk, x + bw / 2, yk], fill=tuple(int(c * 0.6) for c in self.color), width=1)
            draw.line([x - bw / 2, y - bh, x + bw / 2, y], fill=(40, 35, 30), width=max(1, int(s)))

    def active(self, t: int) -> bool:
        return t >= self.start and (self.end is None or t < self.end)


def _new_anomaly(rng: np.random.Generator, kind: str, lay: _Layout, num_frames: int) -> _Anomaly:
    direction = rng.choice([-1.0, 1.0])
    start = int(rng.integers(10, max(11, num_frames - 45)))
    edge = -30.0 if direction > 0 else lay.width + 30.0
    color = _color(rng, PALETTE)
    if kind == "vehicle":
        return _Anomaly(kind, start, edge, float(rng.uniform(-0.3, 0.3)),
                        float(direction * rng.uniform(5.0, 7.5)), float(rng.uniform(0.7, 0.9)), color)
    if kind == "cyclist":
        return _Anomaly(kind, start, edge, float(rng.uniform(-0.6, 0.6)),
                        float(direction * rng.uniform(3.5, 5.0)), 1.0, color, rider=_new_walker(rng, lay))
    if kind == "runner":  # walkers: 0.7-1.6 px/frame (mean 1.15)
        walker = _new_walker(rng, lay)
        return _Anomaly(kind, start, edge, walker.lane, float(direction * rng.uniform(4.6, 6.9)), 1.0, color,
                        rider=walker)
    x = float(rng.uniform(0.15, 0.85) * lay.width)
    end = int(min(num_frames, start + rng.integers(30, 60)))
    return _Anomaly(kind, start, x, float(rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 1.6)), 0.0,
                    float(rng.uniform(0.9, 1.2)), color, end=end)


# ----------------------------------------------------------------------------- rendering


def _break_into_run(an: _Anomaly, walkers: list[_Walker], lay: _Layout) -> list[_Walker]:
    """A runner is one of the crowd who breaks into a run: the walker nearest the frame's centre leaves the crowd
    and carries on from where it is, at the runner's speed, in its own direction (the crowd's size is unchanged, so
    the amount of foreground says nothing). With nobody on screen the runner enters from the edge."""
    on_screen = [w for w in walkers if 0 <= w.x <= lay.width]
    if not on_screen:
        return walkers
    w = min(on_screen, key=lambda k: abs(k.x - lay.width / 2))
    an.x, an.y_off, an.rider = w.x, w.lane, w
    an.speed = math.copysign(abs(an.speed), w.speed)
    return [k for k in walkers if k is not w]


def _render_clip(
    rng: np.random.Generator, cfg: SceneConfig, lay: _Layout, background: np.ndarray,
    num_frames: int, anomalies: list[_Anomaly],
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Frames ``(T, H, W, 3)`` uint8, anomaly masks ``(T, H, W)`` uint8, and per anomaly the frames it shows in."""
    h, w = lay.height, lay.width
    mean_speed, cross = 1.15, w + 30
    rate = cfg.walkers_per_frame * mean_speed / cross  # arrivals/frame that keep the mean population
    # The population drifts slowly (crowds come and go), so foreground area varies a lot over time.
    drift = gaussian_filter(rng.standard_normal(num_frames + 1), 6)
    level = np.exp(0.8 * drift / (drift.std() + 1e-6) - 0.32)  # log-normal, mean 1
    walkers = [_new_walker(rng, lay, x=rng.uniform(0, w)) for _ in range(rng.poisson(cfg.walkers_per_frame))]
    drift_phase, drift_period = rng.uniform(0, 2 * math.pi), rng.uniform(80, 200)
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    masks = np.zeros((num_frames, h, w), np.uint8)
    visible: list[list[int]] = [[] for _ in anomalies]
    for t in range(num_frames):
        for _ in range(rng.poisson(rate * level[t])):
            walkers.append(_new_walker(rng, lay))
        for an in anomalies:
            if an.kind == "runner" and t == an.start:
                walkers = _break_into_run(an, walkers, lay)
        img = Image.fromarray(background.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for wk in sorted(walkers, key=lambda k: k.pos(lay)[1]):  # far ones first
            _draw_walker(draw, wk, lay)
            wk.x += wk.speed
            wk.phase += abs(wk.speed) * 0.35
        walkers = [wk for wk in walkers if -20 <= wk.x <= w + 20]
        frame = np.asarray(img, np.float32)
        for k, an in enumerate(anomalies):
            if not an.active(t):
                continue
            layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
            an.draw(ImageDraw.Draw(layer), t, lay)
            rgba = np.asarray(layer)
            alpha = rgba[..., 3] > 0  # exact mask: the pixels the object covers
            if not alpha.any():
                continue
            frame = np.where(alpha[..., None], rgba[..., :3].astype(np.float32), frame)
            masks[t] |= alpha.astype(np.uint8)
            visible[k].append(t)
        gain = 1.0 + 0.05 * math.sin(2 * math.pi * t / drift_period + drift_phase)
        frame = frame * gain + rng.normal(0.0, 2.5, frame.shape).astype(np.float32)
        frames[t] = frame.clip(0, 255).astype(np.uint8)
    return frames, masks, visible


def _write_avi(path: Path, frames: np.ndarray, fps: int) -> None:
    import av

    with atomic_path(path, path.suffix) as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 3_000_000
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def generate_scene(out: Path | str, cfg: SceneConfig = SceneConfig(), overwrite: bool = False) -> dict:
    """Write the synthetic dataset to ``out``; return the summary also saved as ``out/scene.json``.

    The same ``cfg`` (seed included) always produces the same frames and labels. The summary file is
    written last, so a folder with ``scene.json`` is complete.
    """
    out = Path(out)
    if (out / "scene.json").exists() and not overwrite:
        raise FileExistsError(f"{out}: a generated scene is already there; pass overwrite=True to replace it")
    if out.exists() and overwrite:
        for sub in ("training", "testing", "scene.json"):
            p = out / sub
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    rng = np.random.default_rng(cfg.seed)
    h, w = cfg.height, cfg.width
    lay = _Layout(w, h, path_y0=h * rng.uniform(0.50, 0.6), path_slope=rng.uniform(-0.12, 0.12),
                  path_half=h * 0.13)
    background = _background(rng, lay)
    (out / "training" / "videos").mkdir(parents=True, exist_ok=True)
    for i in range(cfg.train_videos):
        frames, _, _ = _render_clip(rng, cfg, lay, background, cfg.train_frames, [])
        _write_avi(out / "training" / "videos" / f"01_{i + 1:03d}.avi", frames, cfg.fps)
    events = []
    for c in range(cfg.test_clips):
        name = f"01_{c + 1:04d}"
        kinds = [cfg.anomaly_kinds[c % len(cfg.anomaly_kinds)]]
        if c % 3 == 2:
            kinds.append(cfg.anomaly_kinds[(c + 1) % len(cfg.anomaly_kinds)])
        anomalies = [_new_anomaly(rng, k, lay, cfg.test_frames) for k in kinds]
        frames, masks, visible = _render_clip(rng, cfg, lay, background, cfg.test_frames, anomalies)
        d = out / "testing" / "frames" / name
        d.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(d / f"{t:03d}.jpg", quality=95)
        for sub, arr in (("test_frame_mask", masks.any(axis=(1, 2)).astype(np.uint8)), ("test_pixel_mask", masks)):
            (out / "testing" / sub).mkdir(parents=True, exist_ok=True)
            np.save(out / "testing" / sub / f"{name}.npy", arr)
        for an, shown in zip(anomalies, visible, strict=True):
            span = [shown[0], shown[-1] + 1] if shown else None
            events.append({"clip": name, "kind": an.kind, "frames": span})
    labels = [np.load(out / "testing" / "test_frame_mask" / f"01_{c + 1:04d}.npy") for c in range(cfg.test_clips)]
    summary = {
        "config": asdict(cfg),
        "train_frames": cfg.train_videos * cfg.train_frames,
        "test_frames": cfg.test_clips * cfg.test_frames,
        "anomalous_frames": int(sum(int(lab.sum()) for lab in labels)),
        "events": events,
    }
    write_text(json.dumps(summary, indent=2), out / "scene.json")
    return summary
