"""Training augmentation for a fixed camera: normal objects seen at other places and sizes.

:class:`ObjectShift` copies a moving object of a training sample (what differs from its clip's background) to
another place of the same sample: every frame of a motion window with the same offset and its own mask, so the
window shows one consistently moving object. The copy is resized by one factor per window (up to :data:`SCALE`
either way), so its motion scales with its size, as a nearer object's does under a fixed camera's perspective.
The student thus sees normal objects away from where the training footage had them, and the motion predictor
sees them move there. It reads normal training frames only. Why and what it measured: docs/alarms.md.

The background of a clip is the per-pixel median of (up to :data:`BACKGROUND_FRAMES`) of its training frames,
in the network's input space (:func:`clip_backgrounds`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

BACKGROUND_FRAMES = 64  # at most this many frames per clip (evenly spaced) make its median background
FOREGROUND_LEVEL = 0.1  # a pixel differing from the background by more (in [0, 1] grey units, any channel) moves
BOX = (0.24, 0.12)  # height and width of the region copied, as fractions of the frame's: about one walker
MIN_FOREGROUND = 0.002  # fraction of the frame that must be foreground for a sample to be shifted
SCALE = 2.0  # the copy is resized by a factor drawn log-uniformly in [1 / SCALE, SCALE] (nearer or farther away)


def clip_backgrounds(batches: Iterable[dict]) -> dict[str, torch.Tensor]:
    """``{clip: (3, h, w)}``: the median of up to :data:`BACKGROUND_FRAMES` evenly spaced frames of each clip, from
    ordered (unshuffled) batches ``{"frames", "clip"}`` of transformed frames (windows: the last frame of each)."""
    frames: dict[str, list[torch.Tensor]] = {}
    for b in batches:
        x = b["frames"][:, -3:]
        for name, f in zip(b["clip"], x.unbind(0), strict=True):
            frames.setdefault(name, []).append(f.to(torch.float16))
    out = {}
    for name, fs in frames.items():
        step = max(1, len(fs) // BACKGROUND_FRAMES)
        out[name] = torch.stack(fs[::step][:BACKGROUND_FRAMES]).float().median(dim=0).values
    return out


class ObjectShift:
    """With probability ``p`` per sample, copy the pixels around one foreground point of the sample's newest
    frame (the region :data:`BOX`, only where each frame differs from the clip's background, with edges feathered
    over a pixel), resized by a random factor in [1 / :data:`SCALE`, :data:`SCALE`], to a random place of the
    frame; earlier frames of a window move by the same offset and are resized alike."""

    def __init__(self, backgrounds: Mapping[str, torch.Tensor], p: float, std: Sequence[float],
                 device: torch.device | str = "cpu") -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"object shift probability must be in [0, 1]; got {p}")
        self.backgrounds = {k: v.to(device) for k, v in backgrounds.items()}  # on the device once, not per sample
        self.p = p
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor, clips: Sequence[str], generator: torch.Generator) -> torch.Tensor:
        """``x`` ``(B, 3w, H, W)`` -> a copy with objects shifted (``x`` itself is not modified)."""
        return self.apply(x, clips, generator)[0]

    def apply(self, x: torch.Tensor, clips: Sequence[str], generator: torch.Generator
              ) -> tuple[torch.Tensor, list[int]]:
        """``(x with objects shifted, the samples that changed)``; ``x`` itself is not modified."""
        draws = torch.rand(len(x), generator=generator).tolist()
        picks = [i for i, u in enumerate(draws) if u < self.p and clips[i] in self.backgrounds]
        if not picks:
            return x, []
        out = x.clone()
        changed = [i for i in picks  # the background is on its device already: no copy
                   if self._shift(out, i, self.backgrounds[clips[i]].to(x.device), generator)]
        return out, changed

    def foreground(self, frames: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        """``(w, 3, H, W)`` frames -> ``(w, 1, H, W)`` float 0/1 mask of pixels unlike the background (isolated
        pixels removed by a 3x3 opening)."""
        diff = ((frames.float() - background) * self.std.to(frames.device)).abs().amax(1, keepdim=True)
        m = (diff > FOREGROUND_LEVEL).float()
        m = -F.max_pool2d(-m, 3, stride=1, padding=1)  # erode
        return F.max_pool2d(m, 3, stride=1, padding=1)  # dilate

    def _shift(self, out: torch.Tensor, i: int, background: torch.Tensor, g: torch.Generator) -> bool:
        _, c, h, w = out.shape
        frames = out[i].reshape(c // 3, 3, h, w)
        points = self.foreground(frames[-1:], background)[0, 0].nonzero()  # the newest frame's whole mask
        if len(points) < MIN_FOREGROUND * h * w:
            return False
        bh, bw = max(2, round(BOX[0] * h)), max(2, round(BOX[1] * w))
        cy, cx = points[int(torch.randint(len(points), (1,), generator=g))].tolist()
        y0, x0 = min(max(cy - bh // 2, 0), h - bh), min(max(cx - bw // 2, 0), w - bw)
        # Every frame's mask in the box only, from the box and 2 pixels around it (what its 3x3 opening reads):
        # the same values as the whole frame's mask there, for a fifth of the work
        ya, xa, yb, xb = max(y0 - 2, 0), max(x0 - 2, 0), min(y0 + bh + 2, h), min(x0 + bw + 2, w)
        mask = self.foreground(frames[..., ya:yb, xa:xb], background[..., ya:yb, xa:xb])
        mask = mask[..., y0 - ya:y0 - ya + bh, x0 - xa:x0 - xa + bw]
        alpha = F.avg_pool2d(mask, 3, stride=1, padding=1)  # feathered edges
        src = frames[..., y0:y0 + bh, x0:x0 + bw]
        scale = SCALE ** (2 * float(torch.rand((), generator=g)) - 1)
        sh, sw = min(h, max(2, round(bh * scale))), min(w, max(2, round(bw * scale)))
        if (sh, sw) != (bh, bw):  # every frame alike: the object's motion scales with it
            src = F.interpolate(src, size=(sh, sw), mode="bilinear", align_corners=False)
            alpha = F.interpolate(alpha, size=(sh, sw), mode="bilinear", align_corners=False)
        else:
            src = src.clone()
        ty, tx = (int(torch.randint(h - sh + 1, (1,), generator=g)), int(torch.randint(w - sw + 1, (1,), generator=g)))
        dst = frames[..., ty:ty + sh, tx:tx + sw]
        dst.mul_(1 - alpha).add_(alpha * src)  # frames is a view of out[i] (a split of one axis): out changes
        return True
