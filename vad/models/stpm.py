"""STPM: a frozen pretrained teacher pyramid and a randomly initialised student of the same architecture.

Math only: features, per-level discrepancy maps, the combined anomaly map and per-position calibration.
The loss lives in :mod:`vad.models.loss`, training in :mod:`vad.train`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vad.models.backbones import Pyramid
from vad.models.loss import level_discrepancy

COMBINE = ("product", "sum")


class STPM(nn.Module):
    def __init__(self, teacher: Pyramid, student: Pyramid, combine: str = "product") -> None:
        super().__init__()
        if combine not in COMBINE:
            raise ValueError(f"unknown combine {combine!r}; expected one of {COMBINE}")
        self.how = combine
        if teacher.channels != student.channels or teacher.names != student.names:
            raise ValueError(f"student pyramid {student.names}/{student.channels} differs from the teacher's "
                             f"{teacher.names}/{teacher.channels}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student
        # Per-position statistics of normal anomaly maps (set by calibrate(); empty = not calibrated).
        self.register_buffer("calib_loc", torch.empty(0))
        self.register_buffer("calib_scale", torch.empty(0))

    def train(self, mode: bool = True) -> STPM:
        super().train(mode)
        self.teacher.eval()  # frozen: its BatchNorm statistics never move
        return self

    @property
    def stride(self) -> int:
        return min(self.teacher.strides)

    def features(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(B, 3, H, W)`` -> (teacher, student) pyramids ``{level: (B, C, h, w)}``; no gradient to the teacher."""
        with torch.no_grad():
            t = self.teacher(x)
        return t, self.student(x)

    @staticmethod
    def level_maps(t: dict[str, torch.Tensor], s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-level discrepancy ``{level: (B, h, w)}``."""
        return {k: level_discrepancy(t[k], s[k]) for k in t}

    @staticmethod
    def combine(maps: dict[str, torch.Tensor], size: tuple[int, int], how: str = "product") -> torch.Tensor:
        """Upsample each ``(B, h, w)`` map to ``size`` (bilinear) and multiply or add them -> ``(B, *size)``."""
        if how not in COMBINE:
            raise ValueError(f"unknown combine {how!r}; expected one of {COMBINE}")
        out = None
        for m in maps.values():
            m = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
            out = m if out is None else (out * m if how == "product" else out + m)
        return out

    def map_size(self, x: torch.Tensor) -> tuple[int, int]:
        """The anomaly map's ``(h, w)`` for input ``x``: the finest level's grid."""
        return x.shape[-2] // self.stride, x.shape[-1] // self.stride

    def features_to_map(self, t: dict[str, torch.Tensor], s: dict[str, torch.Tensor], size: tuple[int, int]
                        ) -> torch.Tensor:
        """Pyramids -> raw anomaly map ``(B, *size)``, levels combined by this model's rule."""
        return self.combine(self.level_maps(t, s), size, self.how).clamp_min_(0)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> raw anomaly map ``(B, H / s, W / s)`` at the finest level's stride ``s``."""
        t, s = self.features(x)
        return self.features_to_map(t, s, self.map_size(x))

    @property
    def calibrated(self) -> bool:
        return self.calib_loc.numel() > 0

    def set_calibration(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """Per-position statistics ``(h, w)`` of normal maps: calibrated = (map - loc) / scale."""
        if loc.shape != scale.shape or loc.ndim != 2 or bool((scale <= 0).any()):
            raise ValueError(f"calibration needs loc and positive scale of one (h, w) shape; got "
                             f"{tuple(loc.shape)} and {tuple(scale.shape)}")
        self.calib_loc = loc.detach().clone()
        self.calib_scale = scale.detach().clone()

    def calibrate_map(self, amap: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` raw -> per-position standardised map (same shape); needs :meth:`set_calibration`."""
        if not self.calibrated:
            raise RuntimeError("this model has no calibration; train it with calibration enabled")
        if amap.shape[-2:] != self.calib_loc.shape:
            raise ValueError(f"map size {tuple(amap.shape[-2:])} != calibration size {tuple(self.calib_loc.shape)}")
        return (amap - self.calib_loc) / self.calib_scale


def frame_scores(amap: torch.Tensor) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B,)``: the maximum of each map."""
    return amap.flatten(1).amax(1)
