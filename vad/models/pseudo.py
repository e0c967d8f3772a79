"""Pseudo-anomalies: synthetic defects pasted into normal frames, with their exact masks (for RSTPM's
discriminative network).

Each selected frame gets one blob of random shape (a thresholded low-frequency noise field inside an ellipse)
in a random box covering 4-30 % of the frame's height and width. The blob's content is one of:

- a patch of *another* frame of the batch, taken from another place (out-of-place content);
- a patch of the same frame from elsewhere, flipped and with its colour channels permuted;
- a texture: a random colour plus low-frequency noise.

It is alpha-blended over the frame with an opacity drawn from [0.5, 1]. Everything works on normalised
tensors (a linear function of the pixels), on whatever device the batch is on, driven only by ``generator``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _uniform(generator: torch.Generator | None, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def blob_mask(h: int, w: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random connected-looking shape ``(h, w)`` in {0, 1}: low-frequency noise above a threshold, inside the
    inscribed ellipse. Never empty (falls back to the ellipse's centre region)."""
    cells = int(torch.randint(2, 6, (), generator=generator))
    noise = torch.rand(1, 1, cells, cells, generator=generator)
    noise = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=True)[0, 0]
    yy = torch.linspace(-1, 1, h).view(-1, 1)
    xx = torch.linspace(-1, 1, w).view(1, -1)
    ellipse = (yy**2 + xx**2) <= 1.0
    mask = (noise > _uniform(generator, 0.3, 0.6)) & ellipse
    if not bool(mask.any()):
        mask = (yy**2 + xx**2) <= 0.25
    return mask.float()


def pseudo_anomalies(
    x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5, scale: tuple[float, float] = (0.04, 0.3)
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 3, H, W)`` normalised frames -> (frames with pasted defects, masks ``(B, 1, H, W)`` in {0, 1}).
    Each frame is altered with probability ``p``; the others are returned unchanged with an empty mask."""
    b, _, H, W = x.shape
    out, masks = x.clone(), torch.zeros(b, 1, H, W, dtype=x.dtype, device=x.device)
    for i in range(b):
        if _uniform(generator) >= p:
            continue
        h = max(2, int(round(H * _uniform(generator, *scale))))
        w = max(2, int(round(W * _uniform(generator, *scale))))
        y0 = int(torch.randint(0, H - h + 1, (), generator=generator))
        x0 = int(torch.randint(0, W - w + 1, (), generator=generator))
        kind = int(torch.randint(0, 3, (), generator=generator))  # 0 other frame, 1 same frame, 2 texture
        if kind == 0 and b == 1:  # no other frame to take from
            kind = 2
        if kind == 2:
            colour = torch.randn(3, 1, 1, generator=generator) * 1.2
            grain = torch.randn(1, 3, max(1, h // 8), max(1, w // 8), generator=generator) * _uniform(generator, 0, 0.8)
            patch = colour + F.interpolate(grain, size=(h, w), mode="bilinear", align_corners=False)[0]
        else:
            src = (i + 1 + int(torch.randint(0, b - 1, (), generator=generator))) % b if kind == 0 else i
            sy = int(torch.randint(0, H - h + 1, (), generator=generator))
            sx = int(torch.randint(0, W - w + 1, (), generator=generator))
            patch = x[src, :, sy:sy + h, sx:sx + w]
            if kind == 1:
                patch = patch.flip(-1 if _uniform(generator) < 0.5 else -2)
                patch = patch[torch.randperm(3, generator=generator)]
        alpha = blob_mask(h, w, generator) * _uniform(generator, 0.5, 1.0)
        patch, alpha = patch.to(x), alpha.to(x)
        region = out[i, :, y0:y0 + h, x0:x0 + w]
        out[i, :, y0:y0 + h, x0:x0 + w] = region * (1 - alpha) + patch * alpha
        masks[i, 0, y0:y0 + h, x0:x0 + w] = (alpha > 0).to(x.dtype)
    return out, masks


def mask_to_grid(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, 1, H, W)`` pixel masks -> ``(B, h, w)`` fraction of each map cell covered (area average)."""
    return F.adaptive_avg_pool2d(masks, size)[:, 0]
