"""RSTPM: two student-teacher pairs and a discriminative network (Yamada & Hotta, IROS 2022).

No official code is public; this is our reading of the paper, sharing STPM's frozen teacher:

- **Pair 1** is STPM: a student of the teacher's architecture regresses the teacher's pyramid from the image.
- **Pair 2** is a *reconstruction* student: an encoder-decoder fed the teacher's own pyramid, squeezed through a
  bottleneck (half the coarsest level's resolution, ``bottleneck`` channels), that reconstructs every level.
  Trained on normal frames only, it can reproduce normal features but not unseen ones.
- The **discriminative network** (a small U-Net) takes the 2 x levels discrepancy maps of both pairs (log scale,
  at the finest level's grid) and predicts the anomaly mask. It is trained on pseudo-anomalies
  (:mod:`vad.models.pseudo`) with the pairs frozen: binary cross-entropy plus soft Dice against the pasted
  masks' per-cell coverage.

Training stages: ``pairs`` (both students, STPM loss each), then ``disc``. The anomaly map is the
discriminative network's log-odds per cell (its logit: the same ranking as the probability, which in float32
rounds to 1.0 above about 17 and would tie strong detections; temporal smoothing and per-clip normalisation also
behave on log-odds, not on a saturated probability); the frame score is its maximum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vad.models.backbones import Pyramid
from vad.models.base import TeacherStudent, frame_scores
from vad.models.loss import level_discrepancy, stpm_loss
from vad.models.pseudo import mask_to_grid, pseudo_anomalies


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FeatureReconstructor(nn.Module):
    """``{level: (B, C_l, h_l, w_l)}`` -> the same pyramid, rebuilt from a bottleneck at half the coarsest grid."""

    def __init__(self, names: tuple[str, ...], channels: tuple[int, ...], width: int = 64, bottleneck: int = 64):
        super().__init__()
        self.names = names
        self.encode = nn.ModuleList(_conv(c, width) for c in channels)
        self.squeeze = nn.Sequential(_conv(width * len(channels), bottleneck, stride=2), _conv(bottleneck, bottleneck))
        self.decode = nn.ModuleList(
            nn.Sequential(_conv(bottleneck, width), _conv(width, width), nn.Conv2d(width, c, 1)) for c in channels
        )

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        coarse = feats[self.names[-1]].shape[-2:]
        z = torch.cat([F.interpolate(enc(feats[k]), size=coarse, mode="bilinear", align_corners=False)
                       if feats[k].shape[-2:] != coarse else enc(feats[k])
                       for enc, k in zip(self.encode, self.names, strict=True)], 1)
        z = self.squeeze(z)
        return {k: dec(F.interpolate(z, size=feats[k].shape[-2:], mode="bilinear", align_corners=False))
                for dec, k in zip(self.decode, self.names, strict=True)}


class Discriminator(nn.Module):
    """A two-scale U-Net: ``(B, C_in, h, w)`` discrepancy maps -> ``(B, h, w)`` anomaly logits."""

    def __init__(self, cin: int, width: int = 32):
        super().__init__()
        self.inc = nn.Sequential(_conv(cin, width), _conv(width, width))
        self.down = nn.Sequential(_conv(width, 2 * width, stride=2), _conv(2 * width, 2 * width))
        self.up = nn.Sequential(_conv(3 * width, width), _conv(width, width))
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        a = self.inc(d)
        b = F.interpolate(self.down(a), size=a.shape[-2:], mode="bilinear", align_corners=False)
        h = self.up(torch.cat([a, b], 1))
        with torch.autocast(h.device.type, enabled=False):  # log-odds in float32: bf16 would tie frame scores
            return self.out(h.float())[:, 0]


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy + (1 - soft Dice over the batch); ``target`` in [0, 1], same shape."""
    prob = logits.sigmoid()
    dice = (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + (1 - dice)


class RSTPM(TeacherStudent):
    method = "rstpm"
    stages = ("pairs", "disc")

    def __init__(self, teacher: Pyramid, student: Pyramid, bottleneck: int = 64) -> None:
        super().__init__(teacher, student)
        self.reconstructor = FeatureReconstructor(teacher.names, teacher.channels, bottleneck=bottleneck)
        self.disc = Discriminator(2 * len(teacher.names))
        self.set_stage("pairs")

    def stage_modules(self, stage: str) -> list[nn.Module]:
        return [self.student, self.reconstructor] if stage == "pairs" else [self.disc]

    def pyramids(self, x: torch.Tensor) -> tuple[dict, dict, dict]:
        """(teacher, student, reconstruction) pyramids; gradients only into the modules of the current stage."""
        with torch.no_grad():
            t = self.teacher(x)
        return t, self.student(x), self.reconstructor(t)

    def discrepancies(self, t: dict, s: dict, r: dict, size: tuple[int, int]) -> torch.Tensor:
        """``(B, 2L, h, w)``: log discrepancy of each pair at each level, on the finest grid."""
        maps = [level_discrepancy(t[k], other[k]) for other in (s, r) for k in t]
        maps = [m if m.shape[-2:] == size else
                F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
                for m in maps]
        return torch.stack(maps, 1).clamp_min(0).add(1e-4).log()

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.stage == "pairs":
            t, s, r = self.pyramids(x)
            return stpm_loss(t, s) + stpm_loss(t, r)
        x, masks = pseudo_anomalies(x, generator)
        size = self.map_size(x)
        with torch.no_grad():
            d = self.discrepancies(*self.pyramids(x), size)
        return dice_bce(self.disc(d).float(), mask_to_grid(masks, size).float())

    def score_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.disc(self.discrepancies(*self.pyramids(x), self.map_size(x))).float()
        return frame_scores(amap), amap
