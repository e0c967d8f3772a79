"""Models: math only (feature pyramids, student-teacher discrepancy, anomaly maps).

Every method implements :class:`AnomalyModel`; :func:`build_model` picks one by ``model.method``.
"""

from __future__ import annotations

from vad.config import ModelConfig
from vad.models.backbones import (
    BACKBONES,
    Pyramid,
    WeightsUnavailableError,
    backbone_spec,
    build_backbone,
    depthwise_in_float32,
)
from vad.models.base import AnomalyModel, frame_scores
from vad.models.mkd import MKD, build_vgg_expert
from vad.models.motion import MotionSTPM
from vad.models.rstpm import RSTPM
from vad.models.speed import SpeedCue
from vad.models.stpm import STPM

# Pyramid levels per method when model.levels is unset (None: the backbone's default).
MKD_LEVELS = {"efficientnet_lite0": (1, 2, 3)}  # strides 4, 8, 16: hints at several depths


def _teacher_and_student(cfg: ModelConfig, weights: str) -> tuple[Pyramid, Pyramid]:
    """STPM's and RSTPM's pyramids: ``weights`` for the teacher, a random student of the same architecture."""
    if cfg.backbone == "vgg16":
        raise ValueError(f"backbone vgg16 is MKD's expert only; model.method {cfg.method!r} needs one of "
                         f"{sorted(set(BACKBONES) - {'vgg16'})}")
    levels = tuple(cfg.levels) if cfg.levels else backbone_spec(cfg.backbone).levels
    teacher = build_backbone(cfg.backbone, levels, weights, allow_download=cfg.allow_download)
    return teacher, build_backbone(cfg.backbone, levels, "random")


def _build_stpm(cfg: ModelConfig, weights: str) -> STPM:
    if cfg.has_motion:
        return MotionSTPM(*_teacher_and_student(cfg, weights), context=cfg.motion_context, combine=cfg.combine,
                          fusion=cfg.fusion, pool=cfg.motion_pool, levels=cfg.motion_levels)
    return STPM(*_teacher_and_student(cfg, weights), combine=cfg.combine)


def _build_rstpm(cfg: ModelConfig, weights: str) -> RSTPM:
    return RSTPM(*_teacher_and_student(cfg, weights))


def _build_mkd(cfg: ModelConfig, weights: str) -> MKD:
    if cfg.backbone == "vgg16":
        expert = build_vgg_expert(tuple(cfg.levels) if cfg.levels else None, weights, cfg.allow_download)
    else:
        levels = tuple(cfg.levels) if cfg.levels else MKD_LEVELS.get(cfg.backbone, backbone_spec(cfg.backbone).levels)
        expert = build_backbone(cfg.backbone, levels, weights, allow_download=cfg.allow_download)
    return MKD(expert, cfg.direction_weight, cfg.mkd_score)


_BUILDERS = {"stpm": _build_stpm, "rstpm": _build_rstpm, "mkd": _build_mkd}
METHODS = tuple(_BUILDERS)  # the choices of ModelConfig.method (a test keeps them equal)


def build_model(cfg: ModelConfig, teacher_weights: str | None = None) -> AnomalyModel:
    """The network ``cfg`` describes. ``teacher_weights`` overrides ``cfg.teacher_weights`` (e.g. ``"random"``
    when a checkpoint is about to supply them). ``cfg.method`` is one of :data:`METHODS`: the config loader
    refuses any other value by name."""
    model = _BUILDERS[cfg.method](cfg, teacher_weights or cfg.teacher_weights)
    if cfg.has_speed:
        model.speed = SpeedCue(cfg.speed_cell, model.stride, cfg.fusion)
    return model


def speed_cue(model: AnomalyModel) -> SpeedCue | None:
    """A model's speed cue (``model.speed``), or ``None``."""
    return model._modules.get("speed")


def scored_branches(model: AnomalyModel) -> tuple[str, ...]:
    """The branches whose standardised frame scores scoring reports (:class:`vad.runtime.scorer.Scorer`): a fused
    model's,
    then the speed cue's ("appearance" standing for the whole map of a model of one map)."""
    if speed_cue(model) is None:
        return model.branches
    return (*(model.branches or ("appearance",)), "speed")


__all__ = [
    "BACKBONES", "METHODS", "MKD", "RSTPM", "STPM", "AnomalyModel", "MotionSTPM", "Pyramid", "SpeedCue",
    "WeightsUnavailableError", "backbone_spec", "build_backbone", "build_model", "depthwise_in_float32", "frame_scores",
    "scored_branches", "speed_cue",
]
