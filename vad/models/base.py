"""The interface every frame scorer (STPM, RSTPM, MKD) implements, so training, scoring, the evaluator and the
renderer never look inside a method.

A model is trained in one or more *stages* (``stages``); each stage trains some of its child modules
(``stage_modules``) and freezes the rest. At inference, ``score_and_map`` turns a normalised batch into per-frame
scores and an anomaly map at ``stride`` (one value per ``stride`` input pixels) whose values share the scores'
scale. Per-position standardising of the map (statistics of normal hold-out maps) is common to all methods.
:class:`TeacherStudent` holds what STPM and RSTPM share: a frozen teacher pyramid and a student of its shape.
"""

from __future__ import annotations

import torch
from torch import nn

from vad.models.backbones import Pyramid


class AnomalyModel(nn.Module):
    method: str = ""
    stages: tuple[str, ...] = ()
    window: int = 1  # frames per input sample: (B, 3 * window, H, W), the scored frame last, its past before it
    context: int = 0  # past frames a frame's score reads (window - 1); such a model also scores a stream of single
    # frames, the teacher once per frame (past_features, step, step_branch_maps: vad.models.motion)
    branches: tuple[str, ...] = ()  # a fused model's branches (branch_maps, set_branch_stats); () = one map
    # Whether loss() reads a frozen teacher's features of the unaltered input frames only, which a trainer may then
    # compute once per frame and pass in as ``teacher`` (teacher_features' output; vad.offline.trainset)
    teacher_cache: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.stage = self.stages[0]
        # Per-position statistics of normal anomaly maps (set by set_position_stats(); empty = none).
        self.register_buffer("pos_loc", torch.empty(0))
        self.register_buffer("pos_scale", torch.empty(0))

    # --- training -------------------------------------------------------------------------------------------
    def stage_modules(self, stage: str) -> list[nn.Module]:
        """The direct children trained in ``stage``; every other child stays frozen and in eval mode."""
        raise NotImplementedError

    def set_stage(self, stage: str) -> AnomalyModel:
        if stage not in self.stages:
            raise ValueError(f"{self.method} has no training stage {stage!r}; expected one of {self.stages}")
        self.stage = stage
        active = {id(m) for m in self.stage_modules(stage)}
        for child in self.children():
            child.requires_grad_(id(child) in active)
        return self.train(self.training)

    def train(self, mode: bool = True) -> AnomalyModel:
        super().train(mode)
        if mode:  # frozen parts (a pretrained teacher, earlier stages) never update their BatchNorm statistics
            active = {id(m) for m in self.stage_modules(self.stage)}
            for child in self.children():
                if id(child) not in active:
                    child.eval()
        return self

    def fold_teacher(self) -> AnomalyModel:
        """Run the frozen pretrained network with its BatchNorms folded into its convolutions, where it has them (the
        same features with less work: :meth:`vad.models.backbones.Pyramid.fold`). Default: nothing to fold.
        Training folds in float32 and in CPU bf16, where the folded teacher's features are as close to float32's as
        the unfolded teacher's (tests/test_trainset.py). Scoring does not fold: under bf16 autocast the folded
        weights round differently, and the scores' rank correlation with float32 fell to 0.9897, below
        tests/test_fastpath.py's 0.99."""
        return self

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The current stage's training loss for a normalised batch ``(B, 3 * window, H, W)`` of normal frames (windows
        of ``window`` frames, the scored one last, for a model with a past: :attr:`window`).
        ``generator`` drives any randomness (pseudo-anomalies), so a validation pass can be repeatable."""
        raise NotImplementedError

    # --- inference ------------------------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        """Input pixels per anomaly-map cell."""
        raise NotImplementedError

    def map_size(self, x: torch.Tensor) -> tuple[int, int]:
        return x.shape[-2] // self.stride, x.shape[-1] // self.stride

    def score_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``(B, 3 * window, H, W)`` -> (raw per-frame scores ``(B,)``, raw anomaly maps ``(B, h, w)``),
        float32.
        Called under ``torch.no_grad()`` (a method that needs input gradients enables them itself)."""
        raise NotImplementedError

    def branch_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """A fused model's raw maps ``{branch: (B, h, w)}`` before fusion."""
        raise NotImplementedError(f"{self.method} has one branch")

    def set_branch_stats(self, scores: dict[str, torch.Tensor]) -> None:
        """A fused model standardises each branch by its frame scores on normal hold-out frames ``{branch: (N,)}``."""
        raise NotImplementedError(f"{self.method} has one branch")

    def fuse(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """A fused model's branch maps -> its one raw map ``(B, h, w)``."""
        raise NotImplementedError(f"{self.method} has one branch")

    def statistics_ready(self, buffers) -> bool:
        """Whether statistic ``buffers`` are set (no NaN). Read from the device once per change of the buffers (they
        are replaced, moved or loaded, never changed per batch), so a forward pass on a GPU waits for no host read."""
        buffers = tuple(buffers)
        key = tuple((id(b), b._version) for b in buffers)
        if key != getattr(self, "_ready_key", None):
            if not all(bool(torch.isfinite(b).all()) for b in buffers):
                return False
            self._ready_key = key
        return True

    def fit_normal(self, batches) -> None:
        """Statistics the model needs *before* training, from normal training batches ``(B, 3 * window, H, W)``
        (e.g. MKD's activation scales). Default: none."""

    # --- per-position statistics ------------------------------------------------------------------------------
    @property
    def has_position_stats(self) -> bool:
        return self.pos_loc.numel() > 0

    def set_position_stats(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """Per-position statistics ``(h, w)`` of normal maps: standardised = (map - loc) / scale."""
        if loc.shape != scale.shape or loc.ndim != 2 or bool((scale <= 0).any()):
            raise ValueError(f"position statistics need loc and positive scale of one (h, w) shape; got "
                             f"{tuple(loc.shape)} and {tuple(scale.shape)}")
        self.pos_loc = loc.detach().clone()
        self.pos_scale = scale.detach().clone()

    def standardise_map(self, amap: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` raw -> per-position standardised map (same shape); needs :meth:`set_position_stats`."""
        if not self.has_position_stats:
            raise RuntimeError("this model has no per-position statistics; train it with train.position_stats=true")
        if amap.shape[-2:] != self.pos_loc.shape:
            raise ValueError(f"map size {tuple(amap.shape[-2:])} != position statistics size "
                             f"{tuple(self.pos_loc.shape)}")
        return (amap - self.pos_loc) / self.pos_scale


class TeacherStudent(AnomalyModel):
    """A frozen teacher pyramid and a trained student pyramid of the same architecture (STPM, RSTPM); the
    anomaly map is on the teacher's finest level."""

    def __init__(self, teacher: Pyramid, student: Pyramid) -> None:
        if teacher.channels != student.channels or teacher.names != student.names:
            raise ValueError(f"student pyramid {student.names}/{student.channels} differs from the teacher's "
                             f"{teacher.names}/{teacher.channels}")
        super().__init__()
        self.teacher = teacher.requires_grad_(False)
        self.student = student

    @property
    def stride(self) -> int:
        return min(self.teacher.strides)

    def fold_teacher(self) -> TeacherStudent:
        self.teacher.fold()  # frozen since construction (requires_grad_(False) above; never a stage's module)
        return self


def frame_scores(amap: torch.Tensor) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B,)``: the maximum of each map."""
    return amap.flatten(1).amax(1)
