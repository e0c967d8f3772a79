"""The normal reference: what a model's scores are judged against, drawn from normal hold-out frames only.

It depends on how the model scores (:data:`vad.config.SCORING`). :func:`fit_reference` makes it: training for the
trained settings (saved in ``model.pt``), scoring for others (saved in the run folder). From the hold-out scores come
the event threshold, calibrated scores and the heatmaps' colour scale. Test data never enters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vad.atomic import atomic_path
from vad.errors import InputError
from vad.models import frame_scores, speed_cue

# model buffers fitted on the hold-out
STATE_KEYS = ("branch_loc", "branch_scale", "pos_loc", "pos_scale", "speed.loc", "speed.scale")


def event_threshold(normal_scores: np.ndarray, percentile: float) -> float:
    """The event threshold: the ``percentile``-th percentile of a model's normal hold-out frame scores
    (``eval.threshold_percentile``)."""
    normal = np.asarray(normal_scores, dtype=np.float64)
    if not len(normal):
        raise InputError("no normal hold-out scores to draw the event threshold from")
    return float(np.percentile(normal, percentile))


def calibrate(scores: np.ndarray, normal_scores: np.ndarray, threshold: float) -> np.ndarray:
    """Scores on the threshold's scale: 0 at the median normal hold-out frame score, 1 at the event threshold
    (any sign of scores: RSTPM's are log-odds)."""
    low = float(np.median(np.asarray(normal_scores, dtype=np.float64)))
    if not threshold > low:
        raise InputError(f"the event threshold {threshold:.6g} is not above the median normal score {low:.6g}: "
                         "the hold-out scores are constant; calibrated normalisation needs a spread")
    return (np.asarray(scores, dtype=np.float64) - low) / (threshold - low)


def heat_scale(normal_scores: np.ndarray, threshold: float, heat_range: float) -> tuple[float, float]:
    """``(low, high)`` of the heatmap colour scale: low = median normal frame score, and the threshold sits at
    ``1 / heat_range`` of the way to high (``heat_range > 1``: render.heat_range)."""
    low = float(np.median(np.asarray(normal_scores, dtype=np.float64)))
    span = max(threshold - low, 1e-6 * max(abs(threshold), 1e-12))
    return low, low + heat_range * span


def reference_id(scope: str, model_digest: str, settings: Mapping, per_position: bool) -> str:
    """The name of a reference: its scope (``all`` or a scene) and a digest of the model and the settings."""
    key = json.dumps([model_digest, dict(sorted(settings.items())), bool(per_position)])
    return f"{scope}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class NormalReference:
    """A model's normal hold-out frame scores under one scoring setting, and the model statistics fitted with them.

    ``scores`` are the frame scores as the clips scored against this reference have them (per-position
    standardised when ``per_position``); ``state`` holds the statistics (:data:`STATE_KEYS`) the model scores
    with under ``settings``."""

    scores: np.ndarray  # (N,) hold-out frame scores
    settings: dict = field(default_factory=dict)  # the model's scoring settings (vad.config.SCORING)
    per_position: bool = False
    state: dict = field(default_factory=dict)  # {name: array} of STATE_KEYS
    model: str = ""  # the digest of the model file
    branches: tuple = ()  # a fused model's branches (their frame scores: RunFolder.branches)

    def threshold(self, percentile: float) -> float:
        return event_threshold(self.scores, percentile)

    def calibrate(self, scores: np.ndarray, percentile: float) -> np.ndarray:
        return calibrate(scores, self.scores, self.threshold(percentile))

    def heat_scale(self, percentile: float, heat_range: float) -> tuple[float, float]:
        return heat_scale(self.scores, self.threshold(percentile), heat_range)

    def save(self, path: Path) -> None:
        arrays = {f"state_{k}": np.asarray(v) for k, v in self.state.items()}
        meta = json.dumps({"settings": self.settings, "per_position": self.per_position, "model": self.model,
                           "branches": list(self.branches)})
        with atomic_path(path, ".npz") as tmp:
            np.savez(tmp, scores=np.asarray(self.scores, np.float32), meta=np.array(meta), **arrays)

    @classmethod
    def load(cls, path: Path) -> NormalReference:
        """A saved reference; a ``.npy`` file (run folders of earlier versions) holds the hold-out scores alone."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path} not found: the normal reference of scored clips is missing; score them again")
        try:
            if path.suffix == ".npy":
                return cls(np.load(path).astype(np.float64))
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                state = {k.removeprefix("state_"): z[k] for k in z.files if k.startswith("state_")}
                return cls(z["scores"].astype(np.float64), meta["settings"], meta["per_position"], state,
                           meta["model"], tuple(meta.get("branches", ())))
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"{path}: not a readable normal reference ({err}); score the clips again") from None


def position_statistics(maps):
    """Per-position ``(loc, scale)`` of normal maps ``(N, h, w)``: the mean, and the standard deviation with the
    map-wide standard deviation added as a floor, so a position that happened to see little variation in the
    hold-out does not turn every small change into a huge score."""
    loc = maps.mean(0)
    scale = maps.std(0, unbiased=False) + maps.std(unbiased=False)
    return loc, scale.clamp_min(1e-12)


def fit_reference(outputs: Callable[[bool], dict], model, position_stats: bool
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Fit ``model``'s hold-out statistics and return its hold-out frame scores ``(raw, per-position or None)``.

    ``outputs(branches)``: :func:`vad.runtime.batches.outputs` over the normal hold-out. A fused model's branches are
    standardised by their own hold-out frame scores first, and so are the model's map and its speed cue's before
    they are fused; with ``position_stats`` the per-position statistics of the (fused) hold-out maps are set too."""
    if model.branches:
        branch = outputs(True)
        speed = branch.pop("speed", None)
        model.set_branch_stats({b: frame_scores(m) for b, m in branch.items()})
        maps = model.fuse(branch)
        scores = frame_scores(maps)
    else:
        out = outputs(False)
        scores, maps, speed = out["scores"], out["maps"], out.get("speed")
    cue = speed_cue(model)
    if cue is not None:  # the speed cue: both maps standardised on the hold-out, then fused
        cue.set_stats(scores, frame_scores(speed))
        maps = cue.fuse(maps.to(cue.loc.device), speed)[0].cpu()
        scores = frame_scores(maps)
    per_position = None
    if position_stats:
        model.set_position_stats(*position_statistics(maps))
        per_position = frame_scores(model.standardise_map(maps.to(model.pos_loc.device)).cpu()).numpy()
    return scores.numpy(), per_position


def reference_state(model) -> dict[str, np.ndarray]:
    """The hold-out statistics ``model`` scores with (:data:`STATE_KEYS` it has)."""
    buffers = dict(model.named_buffers())
    return {k: buffers[k].detach().cpu().numpy() for k in STATE_KEYS if k in buffers and buffers[k].numel()}


def apply_state(model, state: Mapping[str, np.ndarray]) -> None:
    """Set ``model``'s hold-out statistics from a reference's ``state``."""
    import torch

    buffers = dict(model.named_buffers())
    for k, v in state.items():
        t = torch.as_tensor(np.asarray(v)).to(buffers[k].device) if k in buffers else None
        if t is None:
            raise InputError(f"a normal reference holds {k!r}, which a {model.method} model does not have")
        owner, _, name = k.rpartition(".")  # "speed.loc": a child's buffer
        setattr(model.get_submodule(owner) if owner else model, name, t)


def holdout(clips: Sequence, fraction: float, ranges: dict[str, tuple[int, int]] | None = None
            ) -> tuple[dict, dict]:
    """``(train_ranges, holdout_ranges)``: per clip (its frames ``ranges[name]`` when given, else all ``n``), the
    first frames train and the last ``k`` (a ``fraction`` of them, ``train.val_fraction``) are held out: normal
    footage the model never trains on."""
    if not 0 < fraction < 1:
        raise InputError(f"train.val_fraction must be in (0, 1); got {fraction}")
    train, val = {}, {}
    for c in clips:
        a, b = (ranges or {}).get(c.name, (0, c.num_frames))
        k = max(1, int(round((b - a) * fraction)))
        if b - a - k < 1:
            raise InputError(f"training clip {c.name} has {b - a} frame(s); too short to hold out {fraction:.0%}")
        train[c.name], val[c.name] = (a, b - k), (b - k, b)
    return train, val


def spread_runs(ranges: dict[str, tuple[int, int]], frames: int, run: int) -> list[tuple[str, tuple[int, int]]]:
    """Runs of ``run`` consecutive frames, about ``frames`` in all, spread evenly over ``ranges`` (``{clip: (a, b)}``):
    ``[(clip, (start, stop))]``, by clip name, then start. Consecutive frames keep a motion model's past real; the
    spread reaches from every clip's first frames to its last."""
    total = sum(b - a for a, b in ranges.values())
    if total == 0:
        return []
    runs = max(1, min(frames, total) // run)
    out = []
    for name, (a, b) in sorted(ranges.items()):
        k = max(1, round(runs * (b - a) / total))
        length = min(run, b - a)
        starts = np.linspace(a, b - length, k).round().astype(int) if b - a > length else [a]
        out += [(name, (int(s), int(s) + length)) for s in sorted(set(starts))]
    return out
