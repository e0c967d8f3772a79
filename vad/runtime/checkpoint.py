"""Checkpoints that carry their config: a checkpoint alone rebuilds its model.

Everything saved is a tensor, a number, a string or a dict/list of those, so loading uses
``torch.load(weights_only=True)``: a checkpoint from a stranger cannot run code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vad.atomic import atomic_path
from vad.config import ModelConfig, from_dict, to_dict
from vad.errors import VadError
from vad.models import AnomalyModel, build_model
from vad.tensorfile import load_weights_only

FORMAT = "vad-checkpoint/2"  # 2: per-position statistics renamed (pos_loc, pos_scale), processes and gen always saved


class CheckpointError(VadError, ValueError):
    """A checkpoint file that is missing, unreadable or not one of ours."""


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_checkpoint(path: Path | str) -> dict:
    path = Path(path)
    ckpt = load_weights_only(path, CheckpointError, "checkpoint")
    fmt = str(ckpt.get("format", "")) if isinstance(ckpt, dict) else ""
    if fmt.startswith("vad-checkpoint/") and fmt != FORMAT:
        raise CheckpointError(f"{path}: written by another version of vad (format {ckpt['format']!r}, this one reads "
                              f"{FORMAT!r}); train it again")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vad checkpoint (expected format {FORMAT!r})")
    return ckpt


def model_state(model: AnomalyModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


# what checkpoints written before these keys did
OLDER = {"motion": False, "motion_pool": 1, "motion_levels": "all", "speed": False}


def trained_model_config(ckpt: dict) -> ModelConfig:
    """The model config a checkpoint was trained (and its hold-out statistics fitted) with."""
    return from_dict(ModelConfig, {**OLDER, **ckpt["config"]["model"]}, "model")


def restore_model(ckpt: dict, scoring: Mapping[str, Any] | None = None) -> AnomalyModel:
    """Rebuild the model of a checkpoint dict (no weights are fetched: the checkpoint holds the teacher), with the
    scoring settings ``scoring`` (:data:`vad.config.SCORING`) in place of the trained ones when given. The hold-out
    statistics it loads are the trained settings' (:mod:`vad.runtime.reference` fits others)."""
    trained = to_dict(trained_model_config(ckpt))
    cfg = from_dict(ModelConfig, {**trained, **dict(scoring or {})}, "model")
    model = build_model(cfg, teacher_weights="random")
    state = dict(ckpt["model"])
    loc, scale = state.pop("pos_loc"), state.pop("pos_scale")
    if loc.numel():
        model.set_position_stats(loc, scale)
    model.load_state_dict(state, strict=False)
    missing = set(model.state_dict()) - set(state) - {"pos_loc", "pos_scale"}
    if missing:
        raise CheckpointError(f"checkpoint lacks {sorted(missing)[:4]} for model {cfg.method}/{cfg.backbone}")
    return model.eval()


def load_model(path: Path | str, scoring: Mapping[str, Any] | None = None) -> tuple[AnomalyModel, dict]:
    """``(model, checkpoint)`` from a model file (``scoring``: see :func:`restore_model`); the model is on the CPU in
    eval mode."""
    ckpt = read_checkpoint(path)
    try:
        return restore_model(ckpt, scoring), ckpt
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: {err}") from err
