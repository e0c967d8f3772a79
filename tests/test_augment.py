"""Object shifts (vad.offline.augment): normal objects of a fixed camera copied to other places, motion kept."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests import helpers
from tests.helpers import TINY, frame_auc
from vad.io import read_dataset
from vad.offline.augment import ObjectShift, clip_backgrounds
from vad.offline.train import train
from vad.runtime.batches import score_clips
from vad.runtime.checkpoint import load_model
from vad.runtime.scorer import Scorer

H, W = 128, 192  # the copied region (vad.offline.augment.BOX): 31 x 23 pixels before resizing


def _window(x0s: list[int], y0: int = 20, size: int = 8) -> torch.Tensor:
    """One window ``(1, 3k, H, W)`` on a zero background: a bright square at ``x0s[k]`` in frame ``k``."""
    x = torch.zeros(1, 3 * len(x0s), H, W)
    for k, x0 in enumerate(x0s):
        x[0, 3 * k : 3 * k + 3, y0 : y0 + size, x0 : x0 + size] = 1.0
    return x


def _copy(frame: torch.Tensor, k: int) -> tuple[float, float, float] | None:
    """Centre (y, x) and width of the copy in frame ``k`` of a shifted :func:`_window` ``[10, 12, 14]`` window: the
    bright region other than the original square (None if the copy touches it)."""
    from scipy import ndimage

    img = frame[0].numpy()
    lab, n = ndimage.label(img > 0.05)
    if n != 2:
        return None
    centres = ndimage.center_of_mass(img, lab, [1, 2])  # weighted by brightness: resizing blurs the edges
    j = max((0, 1), key=lambda i: abs(centres[i][0] - 23.5) + abs(centres[i][1] - (13.5 + 2 * k)))
    return (*centres[j], float(img[lab == j + 1].sum()) ** 0.5)  # a square's width from its brightness


def test_a_moving_object_is_copied_with_its_motion_scaled_with_its_size() -> None:
    x = _window([10, 12, 14])  # an 8-pixel square moving right 2 pixels a frame: a quarter of its width
    shift = ObjectShift({"c": torch.zeros(3, H, W)}, p=1.0, std=(0.5, 0.5, 0.5))
    moved, widths, ratios = 0, [], []
    for seed in range(30):
        y = shift(x, ["c"], torch.Generator().manual_seed(seed))
        assert torch.equal(x, _window([10, 12, 14]))  # the input is not modified
        copies = [_copy(y[0, 3 * k : 3 * k + 3], k) for k in range(3)]
        if None in copies:
            continue  # the copy landed on (or touching) the original: not separable here
        moved += 1
        (y0, x0, w0), (y1, x1, _), (y2, x2, _) = copies
        assert max(y0, y1, y2) - min(y0, y1, y2) < 0.3  # no vertical motion appears
        assert abs((x1 - x0) - (x2 - x1)) < 0.3  # every frame alike: a steady speed stays steady
        assert y.min() >= 0 and y.max() <= 1  # a blend of frame pixels, nothing new
        widths.append(w0)
        ratios.append((x2 - x0) / 2 / w0)
    assert moved >= 15
    assert max(widths) / min(widths) > 1.8  # copies are resized, both ways (1 / SCALE .. SCALE)
    assert max(ratios) / min(ratios) < 1.1  # ... and their speed with them: speed relative to size is kept


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


def test_the_box_mask_is_the_whole_frames_mask_there() -> None:
    """The copied region's mask is computed on the box and 2 pixels around it, not the whole frame: the shifted
    windows are exactly those of the whole-frame mask (objects at the frame's edges and corners included)."""
    import torch.nn.functional as F

    from vad.offline.augment import BOX, MIN_FOREGROUND, SCALE

    def whole_frame(sh: ObjectShift, out: torch.Tensor, i: int, background: torch.Tensor, g) -> bool:
        _, c, h, w = out.shape
        frames = out[i].reshape(c // 3, 3, h, w)
        mask = sh.foreground(frames, background)
        points = mask[-1, 0].nonzero()
        if len(points) < MIN_FOREGROUND * h * w:
            return False
        bh, bw = max(2, round(BOX[0] * h)), max(2, round(BOX[1] * w))
        cy, cx = points[int(torch.randint(len(points), (1,), generator=g))].tolist()
        y0, x0 = min(max(cy - bh // 2, 0), h - bh), min(max(cx - bw // 2, 0), w - bw)
        alpha = F.avg_pool2d(mask[..., y0:y0 + bh, x0:x0 + bw], 3, stride=1, padding=1)
        src = frames[..., y0:y0 + bh, x0:x0 + bw]
        scale = SCALE ** (2 * float(torch.rand((), generator=g)) - 1)
        sh_, sw = min(h, max(2, round(bh * scale))), min(w, max(2, round(bw * scale)))
        if (sh_, sw) != (bh, bw):
            src = F.interpolate(src, size=(sh_, sw), mode="bilinear", align_corners=False)
            alpha = F.interpolate(alpha, size=(sh_, sw), mode="bilinear", align_corners=False)
        else:
            src = src.clone()
        ty, tx = int(torch.randint(h - sh_ + 1, (1,), generator=g)), int(torch.randint(w - sw + 1, (1,), generator=g))
        frames[..., ty:ty + sh_, tx:tx + sw].mul_(1 - alpha).add_(alpha * src)
        return True

    g = torch.Generator().manual_seed(0)
    background = torch.rand(3, H, W, generator=g)
    x = background.repeat(6, 3, 1, 1)
    for i in range(6):  # noisy objects, the first ones at corners and edges
        for k in range(3):
            y, x0 = [(0, 0), (H - 30, W - 14), (0, W // 2), *[(None, None)] * 3][i]
            y = int(torch.randint(H - 30, (1,), generator=g)) if y is None else y
            x0 = int(torch.randint(W - 14, (1,), generator=g)) if x0 is None else x0
            x[i, 3 * k:3 * k + 3, y:y + 30, x0 + k:x0 + k + 12] += torch.rand(3, 30, 12, generator=g)
    sh = ObjectShift({"a": background}, 1.0, [0.25, 0.25, 0.25])
    fast, slow = x.clone(), x.clone()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for i in range(6):
        assert sh._shift(fast, i, background, g1) == whole_frame(sh, slow, i, background, g2) is True
    assert torch.equal(fast, slow) and not torch.equal(fast, x)


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
