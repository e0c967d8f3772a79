"""Each stream's kept past, for a model that reads one (``model.context``: the motion branch) and for the speed cue.

A stream (a clip, a camera) is scored in consecutive frames. A stream's first frame, or a frame that does not follow
the last one kept (a gap), starts afresh: its past is itself, as a window's. The speed cue keeps each stream's
previous grey frame by the same rules (:class:`vad.models.speed.SpeedStreams`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vad.device import autocast, to_device
from vad.models import AnomalyModel
from vad.models.speed import SpeedStreams


def frame_streams(clip: str | Sequence[str], first: int | Sequence[int], n: int) -> tuple[list[str], list[int]]:
    """Per frame of a batch of ``n``: its stream and its index there (one stream's frames ``first ..``, or a name
    and an index per frame); an error when the names or indices are not one per frame."""
    streams = [clip] * n if isinstance(clip, str) else list(clip)
    firsts = list(range(first, first + n)) if isinstance(first, int) else [int(f) for f in first]
    if len(streams) != n or len(firsts) != n:
        raise ValueError(f"{n} frames with {len(streams)} stream names and {len(firsts)} frame indices")
    return streams, firsts


@dataclass
class PastPlan:
    """Where the frames of one batch find their past (:meth:`Pasts.plan`): ``pool`` the kept features read
    ``{level: (P, C, h, w)}``, ``index`` ``(B, context)`` rows of ``cat(pool, the batch's features)``, ``keep`` per
    stream the rows that are its last ``context`` frames after the batch and the index of its next frame."""

    pool: dict[str, torch.Tensor]
    index: torch.Tensor
    keep: dict[str, tuple[list[int], int]]


class Pasts:
    """The kept pasts of the streams ``model`` scores on ``device`` (``speeds``: the speed cue's, or None)."""

    def __init__(self, model: AnomalyModel, device: torch.device, speeds: SpeedStreams | None) -> None:
        self.model, self.device, self.speeds = model, device, speeds
        self.dtype: torch.dtype | None = None  # the autocast precision the model's features are computed in
        self.kept: dict[str, tuple[dict[str, torch.Tensor], int]] = {}  # stream -> (its last frames' features, next)
        self._zeros: dict[str, torch.Tensor] | None = None

    def reset(self, dtype: torch.dtype | None) -> None:
        """Forget every stream's past (what runs the model changed: features of another precision)."""
        self.dtype, self.kept, self._zeros = dtype, {}, None
        if self.speeds is not None:
            self.speeds.forget()

    def carried(self) -> tuple[dict, dict]:
        """Every stream's past (features in float32: a runtime's precision) and previous grey frame, to be
        :meth:`restore`-d after a :meth:`reset`."""
        past = {s: ({k: v.float() for k, v in feats.items()}, nxt) for s, (feats, nxt) in self.kept.items()}
        return past, {} if self.speeds is None else dict(self.speeds._last)

    def restore(self, carried: tuple[dict, dict]) -> None:
        past, frames = carried
        self.kept = past
        if self.speeds is not None:
            self.speeds._last.update(frames)

    def plan(self, clip: str | Sequence[str], first: int | Sequence[int], x: torch.Tensor) -> PastPlan:
        """Where each frame of ``x`` finds its past (:meth:`vad.models.motion.MotionSTPM.step`): frames
        ``first ..`` of one stream ``clip``, or per frame its stream and frame index (frames of several cameras
        in one batch). A stream's consecutive frames form a run; a run that follows the last frames kept of its
        stream reads their features (the pool), any other starts afresh, as a clip's first frame."""
        n, k = len(x), self.model.context
        streams, firsts = frame_streams(clip, first, n)
        runs: list[dict] = []
        last: dict[str, dict] = {}
        pool: list[dict[str, torch.Tensor]] = []
        for j, (s, f) in enumerate(zip(streams, firsts, strict=True)):
            run = last.get(s)
            if run is not None and run["next"] == f:
                run["rows"].append(j)
                run["next"] += 1
                continue
            kept = self.kept.get(s) if run is None else None  # a jump inside the batch starts afresh
            offset = None
            if kept is not None and kept[1] == f:
                offset = k * len(pool)
                pool.append(kept[0])
            run = {"stream": s, "rows": [j], "next": f + 1, "offset": offset}
            last[s] = run
            runs.append(run)
        if not pool:  # one block of zeros: the graph always has a pool to read from
            pool.append(self._zero_past(x))
        size = k * len(pool)

        def row(run: dict, p: int) -> int:  # the p-th element of the run's sequence: its past, then its frames
            if p < k:
                return run["offset"] + p if run["offset"] is not None else size + run["rows"][0]
            return size + run["rows"][p - k]

        index = [[0] * k for _ in range(n)]
        for run in runs:
            for m, j in enumerate(run["rows"]):
                index[j] = [row(run, m + i) for i in range(k)]
        keep = {s: ([row(r, len(r["rows"]) + i) for i in range(k)], r["next"]) for s, r in last.items()}
        merged = {name: torch.cat([p[name] for p in pool]) for name in pool[0]}
        return PastPlan(merged, torch.tensor(index, dtype=torch.long, device=self.device), keep)

    def _zero_past(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._zeros is None:
            with autocast(self.device, self.dtype):
                one = self.model.past_features(x[:1])
            self._zeros = {k: v.new_zeros((self.model.context, *v.shape[1:])) for k, v in one.items()}
        return self._zeros

    def remember(self, plan: PastPlan, feats: dict[str, torch.Tensor]) -> None:
        """Keep, per stream of ``plan``, the features of its last ``context`` frames (``feats``: of the batch's)."""
        for stream, (rows, nxt) in plan.keep.items():
            index = torch.tensor(rows, dtype=torch.long, device=self.device)
            kept = {}
            for name, v in feats.items():
                seq = torch.cat([plan.pool[name].to(v.dtype), v[: len(plan.index)]])
                kept[name] = seq.index_select(0, index)
            self.kept[stream] = (kept, nxt)

    def prime(self, x: torch.Tensor, clip: str, first: int) -> None:
        """Read frames ``x`` (normalised, ``first ..`` of ``clip``) as the past of the frames that follow them, without
        scoring them (the real past of a range that starts inside a clip)."""
        x = to_device(x, self.device)
        if self.speeds is not None:
            self.speeds.remember(self.speeds.grey(x), clip, first)
        if not self.model.context:
            return
        plan = self.plan(clip, first, x)
        with torch.no_grad(), autocast(self.device, self.dtype):
            feats = self.model.past_features(x)
        self.remember(plan, feats)

    def forget(self, clip: str | None = None) -> None:
        """Drop the kept past of ``clip`` (every clip's with ``None``)."""
        if clip is None:
            self.kept.clear()
        else:
            self.kept.pop(clip, None)
        if self.speeds is not None:
            self.speeds.forget(clip)
