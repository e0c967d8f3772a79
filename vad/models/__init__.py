"""Models: math only (feature pyramids, student-teacher discrepancy, anomaly maps).

Every method implements :class:`AnomalyModel`; :func:`build_model` picks one by ``model.method``.
"""

from __future__ import annotations

from vad.config import ModelConfig
from vad.models.backbones import BACKBONES, Pyramid, WeightsUnavailableError, backbone_spec, build_backbone
from vad.models.base import AnomalyModel, frame_scores
from vad.models.mkd import MKD, build_vgg_expert
from vad.models.rstpm import RSTPM
from vad.models.stpm import STPM

METHODS = ("stpm", "rstpm", "mkd")
# Pyramid levels per method when model.levels is unset (None: the backbone's default).
MKD_LEVELS = {"efficientnet_lite0": (1, 2, 3)}  # strides 4, 8, 16: hints at several depths


def build_model(cfg: ModelConfig, teacher_weights: str | None = None) -> AnomalyModel:
    """The network ``cfg`` describes. ``teacher_weights`` overrides ``cfg.teacher_weights`` (e.g. ``"random"``
    when a checkpoint is about to supply them)."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown model.method {cfg.method!r}; expected one of {METHODS}")
    weights = teacher_weights or cfg.teacher_weights
    spec = backbone_spec(cfg.backbone)
    if cfg.backbone == "vgg16" and cfg.method != "mkd":
        raise ValueError(f"backbone vgg16 is MKD's expert only; model.method {cfg.method!r} needs one of "
                         f"{sorted(set(BACKBONES) - {'vgg16'})}")
    if cfg.method == "mkd":
        if cfg.backbone == "vgg16":
            expert = build_vgg_expert(tuple(cfg.levels) if cfg.levels else None, weights, cfg.allow_download)
        else:
            levels = tuple(cfg.levels) if cfg.levels else MKD_LEVELS.get(cfg.backbone, spec.levels)
            expert = build_backbone(cfg.backbone, levels, weights, allow_download=cfg.allow_download)
        return MKD(expert, cfg.direction_weight, cfg.mkd_score)
    levels = tuple(cfg.levels) if cfg.levels else spec.levels
    teacher = build_backbone(cfg.backbone, levels, weights, allow_download=cfg.allow_download)
    student = build_backbone(cfg.backbone, levels, "random")
    if cfg.method == "rstpm":
        return RSTPM(teacher, student)
    return STPM(teacher, student, combine=cfg.combine)


__all__ = [
    "BACKBONES", "METHODS", "MKD", "RSTPM", "STPM", "AnomalyModel", "Pyramid", "WeightsUnavailableError",
    "backbone_spec", "build_backbone", "build_model", "frame_scores",
]
