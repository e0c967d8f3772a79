"""Object shifts (vad.augment): normal objects of a fixed camera copied to other places, motion kept."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import helpers
import pytest
import torch
from conftest import TINY, frame_auc

from vad.augment import ObjectShift, clip_backgrounds
from vad.checkpoint import load_model
from vad.io import read_dataset
from vad.score import Scorer, score_clips
from vad.train import train

H, W = 128, 192  # the copied region (vad.augment.BOX): 31 x 23 pixels


def _window(x0s: list[int], y0: int = 20, size: int = 8) -> torch.Tensor:
    """One window ``(1, 3k, H, W)`` on a zero background: a bright square at ``x0s[k]`` in frame ``k``."""
    x = torch.zeros(1, 3 * len(x0s), H, W)
    for k, x0 in enumerate(x0s):
        x[0, 3 * k : 3 * k + 3, y0 : y0 + size, x0 : x0 + size] = 1.0
    return x


def _blobs(frame: torch.Tensor) -> list[tuple[float, float]]:
    """Centres of the bright connected regions of a ``(3, H, W)`` frame."""
    from scipy import ndimage

    lab, n = ndimage.label((frame[0] > 0.5).numpy())
    return [tuple(c) for c in ndimage.center_of_mass(lab > 0, lab, range(1, n + 1))]


def test_a_moving_object_is_copied_with_its_motion() -> None:
    x = _window([10, 12, 14])  # moving right 2 pixels a frame
    shift = ObjectShift({"c": torch.zeros(3, H, W)}, p=1.0, std=(0.5, 0.5, 0.5))
    moved = 0
    for seed in range(20):
        y = shift(x, ["c"], torch.Generator().manual_seed(seed))
        assert torch.equal(x, _window([10, 12, 14]))  # the input is not modified
        frames = [_blobs(y[0, 3 * k : 3 * k + 3]) for k in range(3)]
        if any(len(f) != 2 for f in frames):
            continue  # the copy landed on (or touching) the original: not separable here
        moved += 1
        copies = [max(f, key=lambda c: abs(c[0] - 23.5) + abs(c[1] - (13.5 + 2 * k))) for k, f in enumerate(frames)]
        dy = [c[0] - 23.5 for c in copies]
        dx = [c[1] - (13.5 + 2 * k) for k, c in enumerate(copies)]
        assert max(dy) - min(dy) < 1 and max(dx) - min(dx) < 1  # every frame by the same offset: motion kept
        assert y.min() >= 0 and y.max() <= 1  # a blend of frame pixels, nothing new
    assert moved >= 10


def test_no_foreground_no_change_and_probability() -> None:
    bg = torch.rand(3, H, W)
    still = bg.repeat(3, 1, 1).unsqueeze(0)  # a window of 3 frames equal to the background
    shift = ObjectShift({"c": bg}, p=1.0, std=(0.5, 0.5, 0.5))
    assert torch.equal(shift(still, ["c"], torch.Generator().manual_seed(0)), still)  # nothing moves
    x = _window([10, 12, 14]).repeat(200, 1, 1, 1)
    y = ObjectShift({"c": torch.zeros(3, H, W)}, p=0.25, std=(0.5,) * 3)(x, ["c"] * 200, torch.Generator())
    changed = (y != x).flatten(1).any(1).float().mean().item()
    assert 0.15 < changed < 0.35
    unknown = ObjectShift({"c": torch.zeros(3, H, W)}, p=1.0, std=(0.5,) * 3)
    assert torch.equal(unknown(x[:2], ["other", "other"], torch.Generator()), x[:2])  # no background: untouched
    with pytest.raises(ValueError, match="probability"):
        ObjectShift({}, p=1.5, std=(1, 1, 1))


def test_background_is_the_median_without_passers_by() -> None:
    """A square crossing the clip is not in its background; each clip has its own."""
    frames = torch.zeros(12, 3, H, W)
    for t in range(12):
        frames[t, :, 5:15, 10 * t : 10 * t + 10] = 1.0
    batches = [{"frames": frames[i : i + 4].repeat(1, 2, 1, 1), "clip": ["a"] * 4} for i in range(0, 12, 4)]
    batches.append({"frames": torch.full((2, 6, H, W), 0.5), "clip": ["b", "b"]})
    bg = clip_backgrounds(batches)
    assert set(bg) == {"a", "b"} and bg["a"].shape == (3, H, W)
    assert bg["a"].abs().max() == 0 and torch.allclose(bg["b"], torch.tensor(0.5))


def test_a_student_trained_with_object_shifts_still_sees_a_new_appearance(tmp_path: Path) -> None:
    """Object shifts make *where* a normal object turns up normal, not *what* turns up: a checkerboard crossing
    the normal square's own rows is still separated from normal frames (six epochs on the tiny scene)."""
    scene = helpers.make_anomaly_scene(tmp_path / "scene", row=8)
    cfg = replace(TINY, train=replace(TINY.train, object_shift=0.5))
    train(read_dataset("shanghaitech", scene, "train"), cfg, tmp_path / "run", "cpu", progress=False)
    model, ckpt = load_model(tmp_path / "run" / "model.pt")
    clips = read_dataset("shanghaitech", scene, "test")
    scorer = Scorer(model, ckpt, replace(TINY.score, amp="off"), device="cpu")
    assert frame_auc(score_clips(scorer, clips, tmp_path / "scores", progress=False), clips) >= 0.95
