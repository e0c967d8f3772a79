"""The anomaly heatmap over a frame, and the ANOMALY marker, drawn one way for the rendered videos
(:mod:`vad.offline.render`), the live watch's evidence (:mod:`vad.live.evidence`) and the review page's thumbnails
(:mod:`vad.review`).

Its own module because the review page is written by the evaluate stage, which the renderer imports: the review
module cannot import the renderer back, and the live watch needs none of the renderer's stage.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from vad.config import RenderConfig

RED = (230, 40, 40)


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's default font at ``size`` pixels (a fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def mark_anomaly(canvas: np.ndarray, h: int, tag_font: ImageFont.ImageFont) -> None:
    """Red border round the top ``h`` rows of ``canvas`` ``(H, W, 3)`` uint8 (the picture) and an ANOMALY tag, in
    place."""
    k = max(3, h // 90)
    canvas[:k, :] = RED
    canvas[h - k : h, :] = RED
    canvas[:h, :k] = RED
    canvas[:h, -k:] = RED
    img = Image.fromarray(canvas[:h])
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((0, 0), "ANOMALY", font=tag_font)
    pad = 4
    draw.rectangle([k + 4, k + 4, k + 4 + box[2] + 2 * pad, k + 4 + box[3] + 2 * pad], fill=RED)
    draw.text((k + 4 + pad, k + 4 + pad), "ANOMALY", fill=(255, 255, 255), font=tag_font)
    canvas[:h] = np.asarray(img)


def colormap_lut(name: str) -> torch.Tensor:
    """``(256, 3)`` float table of matplotlib colormap ``name`` (0..255)."""
    import matplotlib

    return torch.from_numpy(matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).float()


def blend(frames: torch.Tensor, heat: torch.Tensor | None, lut: torch.Tensor, opacity: float,
          layout: str, at_threshold: float = 0.5) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` frames and heat in [0, 1] ``(B, H, W)`` -> float ``(B, H, W', 3)`` picture.
    Overlay opacity rises with the square of the heat and is full from the threshold (``at_threshold``) up,
    so quiet regions keep the frame and anything near or above threshold shows plainly."""
    x = frames.float().permute(0, 2, 3, 1)
    if heat is None:
        return x
    colour = lut[(heat * 255).round().long()]  # (B, H, W, 3)
    if layout == "overlay":
        a = (opacity * (heat / at_threshold).clamp(max=1) ** 2).unsqueeze(-1)
        return x * (1 - a) + colour * a
    grey = x.mean(dim=-1, keepdim=True) * 0.35  # heatmap panel: colour over a dimmed grey frame
    a = heat.clamp_min(0.15).unsqueeze(-1)
    return torch.cat([x, grey * (1 - a) + colour * a], dim=2)


def heat_picture(rgb: np.ndarray, amap: np.ndarray | None, scale: tuple[float, float],
                 cfg: RenderConfig) -> np.ndarray:
    """One frame ``(H, W, 3)`` uint8 with its anomaly map ``(h, w)`` (the model's units; ``None``: none) overlaid
    as the renderer does: resized to the frame, coloured on the model's heat scale ``(low, high)``
    (:meth:`vad.runtime.reference.NormalReference.heat_scale`). Returns ``(H, W, 3)`` uint8."""
    h, w = rgb.shape[:2]
    frames = torch.from_numpy(np.require(rgb, requirements=["C", "W"])).permute(2, 0, 1).unsqueeze(0)
    heat = None
    if amap is not None:
        m = F.interpolate(torch.from_numpy(np.asarray(amap, np.float32))[None, None], size=(h, w), mode="bilinear",
                          align_corners=False)[:, 0]
        low, high = scale
        heat = ((m - low) / (high - low)).clamp(0, 1)
    pic = blend(frames, heat, colormap_lut(cfg.colormap), cfg.opacity, "overlay", 1 / cfg.heat_range)
    return pic[0].round().clamp(0, 255).to(torch.uint8).numpy()
