"""Models: math only (feature pyramids, student-teacher discrepancy, anomaly maps)."""

from __future__ import annotations

from vad.config import ModelConfig
from vad.models.backbones import BACKBONES, Pyramid, WeightsUnavailableError, backbone_spec, build_backbone
from vad.models.stpm import STPM, frame_scores

METHODS = ("stpm",)


def build_model(cfg: ModelConfig, teacher_weights: str | None = None) -> STPM:
    """The network ``cfg`` describes. ``teacher_weights`` overrides ``cfg.teacher_weights`` (e.g. ``"random"``
    when a checkpoint is about to supply them)."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown model.method {cfg.method!r}; expected one of {METHODS}")
    levels = tuple(cfg.levels) if cfg.levels else backbone_spec(cfg.backbone).levels
    weights = teacher_weights or cfg.teacher_weights
    teacher = build_backbone(cfg.backbone, levels, weights, allow_download=cfg.allow_download)
    student = build_backbone(cfg.backbone, levels, "random")
    return STPM(teacher, student, combine=cfg.combine)


__all__ = [
    "BACKBONES", "METHODS", "STPM", "Pyramid", "WeightsUnavailableError", "backbone_spec", "build_backbone",
    "build_model", "frame_scores",
]
