"""STPM: a frozen pretrained teacher pyramid and a randomly initialised student of the same architecture.

Math only: pyramids, per-level discrepancy maps and the combined anomaly map (per-position statistics are
common to all methods: :mod:`vad.models.base`). The loss lives in :mod:`vad.models.loss`, training in
:mod:`vad.offline.train`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vad.models.backbones import Pyramid
from vad.models.base import TeacherStudent, frame_scores
from vad.models.loss import level_discrepancy, stpm_loss

COMBINE = ("product", "sum")


class STPM(TeacherStudent):
    method = "stpm"
    stages = ("student",)
    teacher_cache = True

    def __init__(self, teacher: Pyramid, student: Pyramid, combine: str = "product") -> None:
        if combine not in COMBINE:
            raise ValueError(f"unknown combine {combine!r}; expected one of {COMBINE}")
        super().__init__(teacher, student)
        self.combine_rule = combine  # how per-level maps are combined: "product" or "sum"
        self.set_stage("student")

    def stage_modules(self, stage: str) -> list[nn.Module]:
        return [self.student]

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None,
             teacher: tuple[list[dict], dict] | None = None) -> torch.Tensor:
        """STPM's loss; ``teacher``: :meth:`teacher_features` of ``x`` computed beforehand (e.g. once per frame)."""
        _, t = self.teacher_features(x) if teacher is None else teacher
        return stpm_loss(t, self.student(x[:, -3:]))

    def teacher_features(self, x: torch.Tensor) -> tuple[list[dict], dict]:
        """``(past, present)``: the teacher's pyramids of a window's past frames (none here) and of its present."""
        with torch.no_grad():
            return [], self.teacher(x)

    def score_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.anomaly_map(x).float()
        return frame_scores(amap), amap

    def pyramids(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(B, 3, H, W)`` -> (teacher, student) pyramids ``{level: (B, C, h, w)}``; no gradient to the teacher."""
        with torch.no_grad():
            t = self.teacher(x)
        return t, self.student(x)

    @staticmethod
    def level_maps(t: dict[str, torch.Tensor], s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-level discrepancy ``{level: (B, h, w)}``."""
        return {k: level_discrepancy(t[k], s[k]) for k in t}

    @staticmethod
    def combine(maps: dict[str, torch.Tensor], size: tuple[int, int], rule: str = "product") -> torch.Tensor:
        """Upsample each ``(B, h, w)`` map to ``size`` (bilinear) and multiply or add them -> ``(B, *size)``."""
        if rule not in COMBINE:
            raise ValueError(f"unknown combine {rule!r}; expected one of {COMBINE}")
        out = None
        for m in maps.values():
            m = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
            out = m if out is None else (out * m if rule == "product" else out + m)
        return out

    def pyramids_to_map(self, t: dict[str, torch.Tensor], s: dict[str, torch.Tensor], size: tuple[int, int]
                        ) -> torch.Tensor:
        """Pyramids -> raw anomaly map ``(B, *size)``, levels combined by this model's rule."""
        return self.combine(self.level_maps(t, s), size, self.combine_rule).clamp_min_(0)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> raw anomaly map ``(B, H / s, W / s)`` at the finest level's stride ``s``."""
        t, s = self.pyramids(x)
        return self.pyramids_to_map(t, s, self.map_size(x))
