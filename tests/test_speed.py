"""The speed cue (vad.models.speed): optical-flow speed against the normal speeds of its image row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import write_frames
from vad.config import ModelConfig, ScoreConfig, to_dict
from vad.io.dataset import NORMALIZATIONS, FrameTransform
from vad.io.records import frames_clip
from vad.models import build_model, speed_cue
from vad.models.speed import FLOOR, SpeedCue, SpeedStreams, cell_speed, make_flow
from vad.runtime.batches import cell_speeds, outputs, score_clips
from vad.runtime.checkpoint import restore_model
from vad.runtime.scorer import Scorer

H, W = 64, 96


def _scene(n: int, movers: list[tuple[int, float]], seed: int = 0) -> np.ndarray:
    """``n`` grey-textured RGB frames ``(n, H, W, 3)``: a still textured background and a textured 10x6 block per
    mover ``(row, speed in px/frame)`` walking left to right (a fixed camera's footage)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 120, (H, W), dtype=np.uint8)
    block = rng.integers(150, 255, (10, 6), dtype=np.uint8)
    frames = np.repeat(background[None], n, 0)
    for t in range(n):
        for row, speed in movers:
            x = int(round(4 + speed * t)) % (W - 6)
            frames[t, row:row + 10, x:x + 6] = block
    return np.repeat(frames[..., None], 3, -1)


def _speeds(frames: np.ndarray, cue: SpeedCue) -> np.ndarray:
    flow, size = make_flow(), (H // cue.stride, W // cue.stride)
    grey = frames[..., 0]
    return np.stack([cell_speed(flow, None if t == 0 else grey[t - 1], grey[t], size, cue.cells)
                     for t in range(len(grey))])


def test_cell_speed_measures_a_movers_speed_and_nothing_on_still_background() -> None:
    cue = SpeedCue(cell=8, stride=8)
    still = _speeds(_scene(6, []), cue)
    moving = _speeds(_scene(6, [(20, 3.0)]), cue)
    assert still[1:].max() < 0.05  # no motion, no speed
    assert np.isnan(moving[0]).all() and not np.isnan(moving[1:]).any()  # the first frame has no past: unknown
    # the block's cells move about 3 px a frame (averaged with the still cells around it: less, never more)
    assert 1.0 < moving[1:].max() <= 3.5


def test_a_frame_without_a_past_is_neither_normal_nor_anomalous_to_the_cue() -> None:
    """A stream's first frame has no speed: the statistics leave it out, and the fused map is the model's own map
    (the cue's standardised value 0, its normal mean), where zero speed would sit far below every normal frame."""
    cue = SpeedCue(cell=8, stride=8, fusion="sum")
    normal = _speeds(_scene(30, [(10, 1.0), (40, 1.5)], seed=1), cue)
    cue.fit_rows(normal)
    without_first = SpeedCue(cell=8, stride=8)
    without_first.fit_rows(normal[1:])
    torch.testing.assert_close(cue.row_ref, without_first.row_ref)
    rel = cue.relative(torch.from_numpy(normal))
    base = torch.rand(len(rel)) + 1.0
    cue.set_stats(base, rel.flatten(1).amax(1))
    held = rel[1:].flatten(1).amax(1)
    torch.testing.assert_close(cue.loc[1], held.mean())
    torch.testing.assert_close(cue.scale[1], held.std())
    amap = torch.rand(2, *rel.shape[-2:]) * 3
    fused, speed = cue.fuse(amap, rel[:2])
    torch.testing.assert_close(fused[0], (amap[0] - cue.loc[0]) / cue.scale[0])
    assert speed[0] == 0 and torch.isfinite(fused).all()
    zero = cue.fuse(amap[:1], torch.zeros_like(rel[:1]))[0]
    assert (zero < fused[0]).all()  # what scoring no past as zero speed did: lower everywhere


@pytest.mark.parametrize("normalization", sorted(NORMALIZATIONS))
def test_the_flows_grey_frames_are_the_mean_of_the_channels_the_model_saw(normalization: str) -> None:
    """The cue reads normalised frames back as grey: exactly the rounded mean of the uint8 channels."""
    frames = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (4, 3, 20, 30), dtype=np.uint8))
    x = FrameTransform(None, normalization)(frames)
    streams = SpeedStreams(SpeedCue(8, 8), *NORMALIZATIONS[normalization])
    want = (frames.sum(1, dtype=torch.int32).float() / 3).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(streams.grey(x), want)


def test_the_cue_separates_a_fast_mover_from_walkers_at_the_same_rows() -> None:
    """Normal footage: walkers at 1 px/frame on two rows; a test clip with a cyclist at 5 px/frame on one of them
    scores above every normal frame, and a walker at the normal speed does not."""
    cue = SpeedCue(cell=16, stride=8)
    normal = _speeds(_scene(40, [(10, 1.0), (40, 1.5)], seed=1), cue)
    cue.fit_rows(normal[:30])
    held = cue.relative(torch.from_numpy(normal[30:]))
    base = torch.rand(10, *held.shape[-2:])
    cue.set_stats(base.flatten(1).amax(1), held.flatten(1).amax(1))
    assert torch.all(cue.row_ref >= FLOOR)

    def scores(frames: np.ndarray) -> torch.Tensor:
        rel = cue.relative(torch.from_numpy(_speeds(frames, cue)))
        return cue.fuse(torch.zeros_like(rel), rel)[1]

    fast = scores(_scene(12, [(10, 1.0), (40, 5.0)], seed=1))[1:]
    walker = scores(_scene(12, [(10, 1.0), (40, 1.5)], seed=1))[1:]
    normal_max = cue.fuse(torch.zeros_like(held), held)[1].max()
    assert fast.min() > normal_max + 1.0  # standard deviations above the normal hold-out
    assert walker.max() < fast.min()


def test_rows_nearer_than_any_normal_movement_borrow_a_reference_and_references_never_fall_toward_the_camera(
        ) -> None:
    """Normal footage with a fast walker higher in the frame (row 24, 3 px/frame) and a slow one lower (row 44,
    1.5 px/frame), nothing above: from the first busy row down no reference is below one above it (perspective:
    nearer is never slower), so the slow walker's rows take the fast one's; the empty rows above keep their own,
    near the floor (far away, things move slowly); a fast mover counts on any row."""
    cue = SpeedCue(cell=8, stride=8)
    normal = _speeds(_scene(40, [(24, 3.0), (44, 1.5)], seed=2), cue)
    cue.fit_rows(normal)
    ref = cue.row_ref.numpy()
    own = np.percentile(normal[1:].max(2), 99.9, axis=0) + FLOOR  # the first frame has no past
    np.testing.assert_allclose(ref[:2], own[:2], rtol=1e-6)  # above the first busy row (map row 3 of 8 px)
    assert ref[0] < FLOOR + 0.2 and np.all(np.diff(ref[3:]) >= 0)
    assert ref[6] >= ref[3] > own[6] + 0.5  # the slow walker's row took the reference above it
    walker_low = cue.relative(torch.from_numpy(_speeds(_scene(8, [(52, 2.5)], seed=2), cue)))
    assert float(walker_low[1:].max()) < 1.0  # nearer the camera, a bit faster: within the normal fast end
    fast_at_top = cue.relative(torch.from_numpy(_speeds(_scene(8, [(0, 4.0)], seed=2), cue)))
    fast_on_row = cue.relative(torch.from_numpy(_speeds(_scene(8, [(44, 8.0)], seed=2), cue)))
    assert float(fast_at_top[1:].max()) > 2.0 and float(fast_on_row[1:].max()) > 1.3


def _model(speed: bool = True):
    model = build_model(ModelConfig(teacher_weights="random", backbone="resnet18", levels=(1, 2), motion=False,
                                    speed=speed, speed_cell=16)).eval()
    return model


def _fitted(tmp_path: Path):
    """A random STPM with its speed cue fitted on a synthetic scene (rows and statistics)."""
    model = _model()
    ckpt = {"input_size": [H, W], "normalization": "imagenet"}
    normal = frames_clip(write_frames(tmp_path / "normal", _scene(24, [(10, 1.0), (40, 1.5)], seed=2), ext=".png"),
                         name="normal")
    scorer = Scorer(model, ckpt, ScoreConfig(batch_size=4, amp="off", compile=False, save_maps=False), "cpu")
    cue = speed_cue(model)
    cue.fit_rows(cell_speeds(scorer, [(normal, (0, 16))]))
    out = outputs(scorer, [normal], {"normal": (16, 24)})
    cue.set_stats(out["scores"], out["speed"].flatten(1).amax(1))
    # A random network's map barely varies on this hold-out (spread 0 to 0.01): standardised by that spread, its
    # rounding would be tens of standard deviations. These tests are about the speed cue: the map gets unit scale.
    cue.scale[0] = 1.0
    return model, ckpt


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_scores_with_speed_are_causal_and_the_same_in_any_batching(tmp_path: Path, batch_size: int) -> None:
    """Changing later frames leaves earlier scores as they were; a stream scored in batches of any size, or frame by
    frame as a live camera's, or as windows, gives the same scores."""
    model, ckpt = _fitted(tmp_path)
    data = _scene(14, [(10, 1.0), (40, 4.0)], seed=3)
    later = data.copy()
    later[8:] = _scene(6, [(20, 6.0)], seed=4)
    scores = []
    for name, arr in (("a", data), ("b", later)):
        clip = frames_clip(write_frames(tmp_path / name, arr, ext=".png"), name=name)
        cfg = ScoreConfig(batch_size=batch_size, amp="off", compile=False, save_maps=False)
        scores.append(score_clips(Scorer(model, ckpt, cfg, "cpu"), [clip], tmp_path / f"out_{name}",
                                  progress=False)[name])
    np.testing.assert_allclose(scores[0][:8], scores[1][:8], rtol=1e-4, atol=1e-4)
    assert not np.allclose(scores[0][8:], scores[1][8:])
    # frame by frame, two streams interleaved in one batch each time (a site's cameras)
    scorer = Scorer(model, ckpt, ScoreConfig(batch_size=2, amp="off", compile=False, save_maps=False), "cpu")
    x = scorer.transform(torch.from_numpy(np.stack([data, later])).permute(0, 1, 4, 2, 3).flatten(0, 1))
    x = x.view(2, len(data), *x.shape[1:])
    live = np.stack([scorer(x[:, t], ["a", "b"], [t, t])[0].numpy() for t in range(len(data))], 1)
    np.testing.assert_allclose(live[0], scores[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(live[1], scores[1], rtol=1e-4, atol=1e-4)


def test_a_fast_mover_raises_the_fused_score_and_names_the_speed_branch(tmp_path: Path) -> None:
    model, ckpt = _fitted(tmp_path)
    scorer = Scorer(model, ckpt, ScoreConfig(batch_size=8, amp="off", compile=False, save_maps=False), "cpu")
    walk = frames_clip(write_frames(tmp_path / "walk", _scene(12, [(10, 1.0), (40, 1.5)], seed=2), ext=".png"),
                       name="walk")
    fast = frames_clip(write_frames(tmp_path / "fast", _scene(12, [(10, 1.0), (40, 6.0)], seed=2), ext=".png"),
                       name="fast")
    got = score_clips(scorer, [walk, fast], tmp_path / "run", progress=False)
    assert got["fast"][2:].min() > got["walk"][2:].max()
    branches = np.load(tmp_path / "run" / "branches" / "fast.npy")
    assert branches.shape == (12, 2)  # appearance (the model's own map), speed
    assert np.all(branches[2:, 1] > branches[2:, 0])


def test_a_checkpoint_keeps_the_speed_cues_statistics(tmp_path: Path) -> None:
    model, _ = _fitted(tmp_path)
    cfg = ModelConfig(teacher_weights="random", backbone="resnet18", levels=(1, 2), motion=False, speed=True,
                      speed_cell=16)
    ckpt = {"config": {"model": to_dict(cfg)}, "model": {k: v.clone() for k, v in model.state_dict().items()}}
    back = speed_cue(restore_model(ckpt))
    cue = speed_cue(model)
    assert back.ready and torch.equal(back.row_ref, cue.row_ref) and torch.equal(back.loc, cue.loc)
    # a checkpoint written before the cue existed has none (and scores as it always did)
    old = {"config": {"model": {k: v for k, v in to_dict(cfg).items() if k not in ("speed", "speed_cell")}},
           "model": {k: v for k, v in model.state_dict().items() if not k.startswith("speed.")}}
    assert speed_cue(restore_model(old)) is None


def test_an_unfitted_cue_refuses_to_score() -> None:
    cue = SpeedCue(cell=16, stride=8)
    with pytest.raises(RuntimeError, match="no statistics"):
        cue.fuse(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="at least the anomaly map's stride"):
        SpeedCue(cell=4, stride=8)
