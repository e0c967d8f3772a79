"""Motion: STPM with a second, causal student that predicts the present from the past, fused with appearance.

:class:`MotionSTPM` is STPM (the appearance branch) plus a future-feature predictor (the motion branch) on the same
frozen teacher:

- The predictor maps the teacher's features of frames ``t - k .. t - 1`` to those of frame ``t``, at the pyramid's
  finest level (``levels="finest"``) or every level (``"all"``, combined like STPM's maps). Its map is the
  discrepancy between prediction and teacher, averaged over ``pool`` x ``pool`` cells.
- Training: STPM's loss for the student plus :func:`motion_weighted_loss` for the predictor, summed.
- Input: windows ``(B, 3 * (k + 1), H, W)``, frames ``t - k .. t`` stacked on the channel axis, oldest first
  (:class:`~vad.io.dataset.FrameStream` with ``window = k + 1``; a clip's first frames repeat frame 0 as their
  past). Only past frames are read: scores are causal.
- Fusion: each branch's map is standardised by the mean and standard deviation of its frame scores on normal
  hold-out frames (:meth:`MotionSTPM.set_branch_stats`, fitted by :mod:`vad.runtime.reference`), then the maximum
  (``fusion="max"``) or the sum (``"sum"``) is taken. ``fusion`` and ``pool`` change scoring only.
- A stream's first frame (or the first after a gap) has no past: its past is itself, so the predictor "predicts"
  the frame it is given, about 2 standard deviations below normal frames. That is no evidence, and the motion branch
  says so: its standardised map is 0 there (its normal mean; :meth:`MotionSTPM.no_past`), and the hold-out
  statistics leave such frames out (NaN in the raw maps of :func:`vad.runtime.batches.outputs`), as the speed cue
  does for its own first frames.

Why each piece is there, and what it measured: docs/motion.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vad.models.backbones import Pyramid
from vad.models.base import frame_scores
from vad.models.loss import level_discrepancy, stpm_loss
from vad.models.stpm import STPM

FUSIONS = ("sum", "max")
MOTION_LEVELS = ("finest", "all")


class Predictor(nn.Module):
    """Per pyramid level, a small convolutional net: the teacher's features of ``k`` past frames (stacked on the
    channel axis) -> the features of the next frame. Three 3x3 convolutions see 7x7 cells (56 px at stride 8) of
    the past: room for any normal displacement, and for learning which displacements are normal where."""

    def __init__(self, names: tuple[str, ...], channels: tuple[int, ...], context: int, hidden: int = 128) -> None:
        super().__init__()
        self.names = names
        self.nets = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c * context, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                nn.Conv2d(hidden, c, 3, padding=1),
            )
            for c in channels
        )

    def forward(self, past: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: net(torch.cat([p[k] for p in past], dim=1)) for k, net in zip(self.names, self.nets, strict=True)}


def motion_weighted_loss(t: dict[str, torch.Tensor], last: dict[str, torch.Tensor], pred: dict[str, torch.Tensor]
                         ) -> torch.Tensor:
    """The predictor's loss: per level, its discrepancy to the teacher's present ``t``, weighted per position by
    ``1 + change / mean(change)``, where ``change`` is the teacher's own discrepancy between the last past frame and
    the present (AED-MAE weights its loss by a motion gradient alike). Most positions are still background that
    copying the past predicts; the weight makes the few that move, which carry what normal motion looks like,
    count as much as all of them together. Over the levels of ``pred`` (``t`` and ``last`` may have more),
    summed, as :func:`~vad.models.loss.stpm_loss`."""
    total = 0
    for k in pred:  # the predictor's levels
        change = level_discrepancy(t[k], last[k])
        weight = 1 + change / change.mean().clamp_min(1e-12)
        total = total + (weight * level_discrepancy(t[k], pred[k])).mean()
    return total


def pool_map(amap: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, h, w)`` -> the same shape: the mean over ``k`` x ``k`` cells (odd ``k``; at the edges, of those inside)."""
    return F.avg_pool2d(amap.unsqueeze(1), k, stride=1, padding=k // 2, count_include_pad=False).squeeze(1)


class MotionSTPM(STPM):
    """STPM (appearance) + a future-feature predictor (motion) on one frozen teacher; see the module docstring."""

    branches = ("appearance", "motion")

    def __init__(self, teacher: Pyramid, student: Pyramid, context: int = 2, combine: str = "product",
                 fusion: str = "max", pool: int = 3, levels: str = "finest") -> None:
        if context < 1:
            raise ValueError(f"model.motion_context must be >= 1; got {context}")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown model.fusion {fusion!r}; expected one of {FUSIONS}")
        if pool < 1 or pool % 2 == 0:
            raise ValueError(f"model.motion_pool must be an odd number of cells; got {pool}")
        if levels not in MOTION_LEVELS:
            raise ValueError(f"unknown model.motion_levels {levels!r}; expected one of {MOTION_LEVELS}")
        super().__init__(teacher, student, combine)
        n = 1 if levels == "finest" else len(teacher.names)  # the pyramid's levels go from fine to coarse
        self.motion_levels = levels
        self.predictor = Predictor(tuple(teacher.names[:n]), tuple(teacher.channels[:n]), context)
        self.context = context
        self.window = context + 1
        self.fusion = fusion
        self.pool = pool
        # Per branch: mean and standard deviation of normal hold-out frame scores (NaN until set_branch_stats).
        self.register_buffer("branch_loc", torch.full((len(self.branches),), float("nan")))
        self.register_buffer("branch_scale", torch.full((len(self.branches),), float("nan")))
        self.set_stage("student")

    def stage_modules(self, stage: str) -> list[nn.Module]:
        predictor = self._modules.get("predictor")  # absent while STPM's constructor sets the stage
        return [self.student] if predictor is None else [self.student, predictor]

    def _split(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if x.shape[1] != 3 * self.window:
            raise ValueError(f"motion model expects windows of {self.window} frames (B, {3 * self.window}, H, W); "
                             f"got {tuple(x.shape)}")
        frames = list(x.split(3, dim=1))
        return frames[:-1], frames[-1]

    def teacher_features(self, x: torch.Tensor) -> tuple[list[dict], dict]:
        """Teacher pyramids of the past frames (the predictor's levels only: the teacher stops at the deepest of
        them) and of the present one (every level)."""
        past, now = self._split(x)
        with torch.no_grad():
            t = self.teacher(now)
            before = self.teacher(torch.cat(past), self.past_levels)
        chunks = {k: v.chunk(self.context) for k, v in before.items()}
        return [{k: v[i] for k, v in chunks.items()} for i in range(self.context)], t

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None,
             teacher: tuple[list[dict], dict] | None = None) -> torch.Tensor:
        past_t, t = self.teacher_features(x) if teacher is None else teacher
        return stpm_loss(t, self.student(x[:, -3:])) + motion_weighted_loss(t, past_t[-1], self.predictor(past_t))

    def branch_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw maps ``{branch: (B, h, w)}`` (before standardisation)."""
        return self.maps_from(*self.teacher_features(x), x)

    # --- scoring a stream: the teacher once per frame ------------------------------------------------------------
    @property
    def past_levels(self) -> tuple[str, ...]:
        """The teacher levels the predictor reads of past frames (all that a stream keeps of them)."""
        return self.predictor.names

    def past_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frames ``(B, 3, H, W)`` -> the teacher's features the predictor reads ``{level: (B, C, h, w)}`` (the
        teacher stops at the deepest of them)."""
        with torch.no_grad():
            return self.teacher(x, self.past_levels)

    def step_branch_maps(self, x: torch.Tensor, pool: dict[str, torch.Tensor], index: torch.Tensor
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Branch maps of frames ``x`` ``(B, 3, H, W)``, of one stream or of several (cameras), the teacher run once
        on each. Each frame's past comes from ``seq = cat(pool, teacher(x))`` per level: ``pool`` holds kept
        features of past frames (the predictor's levels, ``(P, C, h, w)`` each), ``index`` ``(B, context)`` (int64)
        the rows of ``seq`` that are frame ``j``'s ``context`` past frames, oldest first. A stream's first frame
        (or the first after a gap) is its own past, as in a window: its rows point at itself. Built by
        :meth:`vad.runtime.scorer.Pasts.plan`. Returns the maps and the predictor's levels of ``x`` (what a stream keeps
        for the frames after). Equal to :meth:`branch_maps` of the frames' windows."""
        with torch.no_grad():
            t = self.teacher(x)
        seq = {k: torch.cat([pool[k], t[k]]) for k in self.past_levels}
        past_t = [{k: v.index_select(0, index[:, i]) for k, v in seq.items()} for i in range(self.context)]
        return self.maps_from(past_t, t, x), {k: t[k] for k in self.past_levels}

    def step(self, x: torch.Tensor, pool: dict[str, torch.Tensor], index: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`step_branch_maps` fused: (scores ``(B,)``, map ``(B, h, w)``, each branch's standardised frame score
        ``(B, len(branches))``, the predictor's levels of ``x``)."""
        maps, feats = self.step_branch_maps(x, pool, index)
        z = self.standardised(maps, self.no_past(pool, index))
        amap = self.combine_branches(z)
        return frame_scores(amap), amap, z.flatten(2).amax(2).T, feats

    @staticmethod
    def no_past(pool: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """``(B,)`` whether each frame of a step is its own latest past (a stream's first frame: :meth:`Pasts.plan
        <vad.runtime.scorer.Pasts.plan>` points its past at itself), from the step's ``pool`` and ``index``."""
        own = torch.arange(index.shape[0], device=index.device) + next(iter(pool.values())).shape[0]
        return index[:, -1] == own

    @staticmethod
    def windows_without_past(x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` whether each window's latest past frame is its present one (a clip's first window repeats it)."""
        return (x[:, -6:-3] == x[:, -3:]).flatten(1).all(1)

    def maps_from(self, past_t: list[dict], t: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`branch_maps` from the teacher's pyramids already computed for windows ``x``."""
        size = self.map_size(x)
        pred = self.predictor(past_t)
        motion = self.pyramids_to_map({k: t[k] for k in pred}, pred, size).float()
        if self.pool > 1:  # a mover misses over its body; a lone cell is noise
            motion = pool_map(motion, self.pool)
        return {"appearance": self.pyramids_to_map(t, self.student(x[:, -3:]), size).float(), "motion": motion}

    @property
    def has_branch_stats(self) -> bool:
        return self.statistics_ready((self.branch_loc, self.branch_scale))

    def set_branch_stats(self, scores: dict[str, torch.Tensor]) -> None:
        """Standardise each branch by its normal hold-out frame scores ``{branch: (N,)}`` (NaN: a frame without a past,
        left out)."""
        scores = {b: v[~torch.isnan(v)] for b, v in scores.items()}
        if set(scores) != set(self.branches) or any(len(v) < 2 for v in scores.values()):
            raise ValueError(f"branch statistics need at least 2 hold-out scores for each of {self.branches}")
        loc = torch.stack([scores[b].float().mean() for b in self.branches])
        scale = torch.stack([scores[b].float().std() for b in self.branches]).clamp_min(1e-12)
        self.branch_loc = loc.to(self.branch_loc.device)
        self.branch_scale = scale.to(self.branch_scale.device)

    def standardised(self, maps: dict[str, torch.Tensor], no_past: torch.Tensor | None = None) -> torch.Tensor:
        """Branch maps -> ``(len(branches), B, h, w)``: each standardised by its hold-out statistics; the motion
        branch 0 (no evidence) on frames ``no_past`` ``(B,)`` or where its raw map is NaN."""
        if not torch.compiler.is_compiling() and not self.has_branch_stats:  # a host read: not inside a graph
            raise RuntimeError("this motion model has no branch statistics (set at the end of training)")
        loc, scale = (v.to(maps[self.branches[0]].device) for v in (self.branch_loc, self.branch_scale))
        z = [(maps[b] - loc[i]) / scale[i] for i, b in enumerate(self.branches)]
        m = self.branches.index("motion")
        unknown = torch.isnan(z[m]) if no_past is None else no_past[:, None, None].expand_as(z[m])
        z[m] = torch.where(unknown, torch.zeros_like(z[m]), z[m])
        return torch.stack(z)

    def combine_branches(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised branch maps ``(len(branches), B, h, w)`` -> the fused map: their sum or their maximum."""
        return z.sum(0) if self.fusion == "sum" else z.amax(0)

    def fuse(self, maps: dict[str, torch.Tensor], no_past: torch.Tensor | None = None) -> torch.Tensor:
        """Branch maps -> one map: each standardised by its hold-out statistics, then summed (or the maximum)."""
        return self.combine_branches(self.standardised(maps, no_past))

    def score_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.anomaly_map(x)
        return frame_scores(amap), amap

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.branch_maps(x), self.windows_without_past(x))
