"""The motion branch: frame windows in the data path, causal scoring, fusion statistics, and a trained model that
tells a fast mover from the same sprite at walking speed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import vad.io.dataset as ds
from tests.helpers import TINY, write_frames, write_video
from vad.config import ModelConfig, ScoreConfig, load_config, to_dict
from vad.io import read_dataset
from vad.io.dataset import FrameStream, FrameTransform, windows
from vad.io.records import frames_clip
from vad.models import MotionSTPM, build_model, frame_scores
from vad.models.loss import level_discrepancy, stpm_loss
from vad.models.motion import motion_weighted_loss
from vad.models.stpm import STPM
from vad.offline.train import train
from vad.runtime.batches import outputs, score_clips
from vad.runtime.checkpoint import load_model
from vad.runtime.reference import holdout
from vad.runtime.scorer import Scorer


def _coded(clip: int, n: int, h: int = 16, w: int = 16) -> np.ndarray:
    """Frames whose grey level says which clip and frame they are: 100 * clip + 4 * index (lossless in PNG)."""
    return np.stack([np.full((h, w, 3), 100 * clip + 4 * t, np.uint8) for t in range(n)])


def _decode(window: torch.Tensor) -> list[tuple[int, int]]:
    """A uint8 window (3w, H, W) -> [(clip, index)] of its frames, oldest first."""
    return [_code(int(f[0, 0, 0])) for f in window.split(3)]


def _code(level: int) -> tuple[int, int]:
    clip, rest = divmod(level, 100)
    return clip, rest // 4


def _clip(folder: Path):
    return frames_clip(folder, name=folder.name)


@pytest.fixture
def coded_clips(tmp_path: Path):
    return [_clip(write_frames(tmp_path / f"c{k}", _coded(k, n), ext=".png")) for k, n in ((0, 11), (1, 7))]


def test_windows_helper_stacks_consecutive_frames() -> None:
    seq = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 1, 1)
    out = windows(seq, 3)
    assert out.shape == (3, 9, 1, 1)
    assert out[:, ::3].flatten(1).tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    with pytest.raises(ValueError, match="no window of 3"):
        windows(seq[:2], 3)


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_windows_stay_in_their_clip_and_a_clip_start_repeats_frame_0(coded_clips, batch_size: int) -> None:
    seen = []
    for batch in FrameStream(coded_clips, None, batch_size=batch_size, window=3):
        assert batch["frames"].shape[1:] == (9, 16, 16)
        for name, t, win in zip(batch["clip"], batch["index"].tolist(), batch["frames"], strict=True):
            clip = int(name[1:])
            assert _decode(win) == [(clip, max(t - 2, 0)), (clip, max(t - 1, 0)), (clip, t)]
            seen.append((clip, t))
    assert sorted(seen) == [(0, t) for t in range(11)] + [(1, t) for t in range(7)]


def test_a_range_reads_its_real_past_and_shuffling_keeps_windows_whole(coded_clips) -> None:
    ranges = {"c0": (5, 9), "c1": (1, 7)}
    got = {}
    for batch in FrameStream(coded_clips, None, batch_size=2, window=3, ranges=ranges):
        for name, t, win in zip(batch["clip"], batch["index"].tolist(), batch["frames"], strict=True):
            got[(name, t)] = _decode(win)
    assert sorted(got) == [("c0", t) for t in range(5, 9)] + [("c1", t) for t in range(1, 7)]
    assert got[("c0", 5)] == [(0, 3), (0, 4), (0, 5)]  # real predecessors before the range
    assert got[("c1", 1)] == [(1, 0), (1, 0), (1, 1)]  # only frame 0 before it: it stands in for t = -1
    mixed = FrameStream(coded_clips, FrameTransform(None, "none"), batch_size=3, window=3, shuffle=True,
                        shuffle_buffer=5)
    for batch in mixed:
        for name, t, win in zip(batch["clip"], batch["index"].tolist(), batch["frames"], strict=True):
            levels = (win[::3, 0, 0] * 255).round().long().tolist()
            assert [_code(v) for v in levels] == [(int(name[1:]), max(t - j, 0)) for j in (2, 1, 0)]


def test_every_frame_is_decoded_once(coded_clips, monkeypatch) -> None:
    decoded = []
    real = ds.iter_frames

    def counting(clip, **kw):
        for first, frames in real(clip, **kw):
            decoded.extend((clip.name, first + i) for i in range(len(frames)))
            yield first, frames

    monkeypatch.setattr(ds, "iter_frames", counting)
    n = sum(len(b["index"]) for b in FrameStream(coded_clips, None, batch_size=4, window=3))
    assert n == 18 and len(decoded) == len(set(decoded)) == 18


def test_jpeg_bytes_need_single_frames(coded_clips) -> None:
    with pytest.raises(ValueError, match="window=1"):
        FrameStream(coded_clips, None, jpeg_bytes=True, window=3)


def _random_motion_model() -> MotionSTPM:
    model = build_model(ModelConfig(teacher_weights="random", backbone="resnet18", levels=(1, 2),
                                    speed=False)).eval()
    assert isinstance(model, MotionSTPM) and model.window == 3
    model.set_branch_stats({"appearance": torch.tensor([1.0, 2.0]), "motion": torch.tensor([0.5, 1.5])})
    return model


def test_scoring_is_causal(tmp_path: Path) -> None:
    """A frame's score depends on it and its past only: changing later frames leaves earlier scores as they were,
    across batch boundaries (batch 4, window 3)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (14, 32, 48, 3), dtype=np.uint8)
    later = data.copy()
    later[8:] = rng.integers(0, 255, later[8:].shape, dtype=np.uint8)
    model = _random_motion_model()
    ckpt = {"input_size": [32, 48], "normalization": "imagenet"}
    scores = []
    for name, arr in (("a", data), ("b", later)):
        clip = _clip(write_frames(tmp_path / name, arr, ext=".png"))
        scorer = Scorer(model, ckpt, ScoreConfig(batch_size=4, amp="off", compile=False, save_maps=False), "cpu")
        scores.append(score_clips(scorer, [clip], tmp_path / f"out_{name}", progress=False)[clip.name])
    np.testing.assert_array_equal(scores[0][:8], scores[1][:8])
    assert not np.allclose(scores[0][8:], scores[1][8:])


def _window_scores(model, clips, ckpt, ranges=None) -> dict[str, np.ndarray]:
    """Every frame's score from its window (the teacher on each of its frames): the reference for streams."""
    stream = FrameStream(clips, FrameTransform(tuple(ckpt["input_size"]), ckpt["normalization"]), batch_size=5,
                         window=model.window, ranges=ranges)
    out: dict[str, list] = {}
    with torch.no_grad():
        for batch in stream:
            out.setdefault(batch["clip"][0], []).append(model.score_and_map(batch["frames"])[0])
    return {k: torch.cat(v).numpy() for k, v in out.items()}


@pytest.mark.parametrize("batch_size", [1, 2, 6, 32])
def test_a_stream_with_the_teacher_once_per_frame_scores_as_windows(tmp_path: Path, batch_size: int) -> None:
    """The scorer keeps each clip's last teacher features and runs the teacher once per frame; every frame's score
    equals its window's: clip starts (frame 0 stands in for the past), batch boundaries, two clips in turn."""
    rng = np.random.default_rng(1)
    clips = [_clip(write_frames(tmp_path / f"c{k}", rng.integers(0, 255, (n, 32, 48, 3), dtype=np.uint8), ext=".png"))
             for k, n in ((0, 13), (1, 4))]
    model = _random_motion_model()
    ckpt = {"input_size": [32, 48], "normalization": "imagenet"}
    scorer = Scorer(model, ckpt, ScoreConfig(batch_size=batch_size, amp="off", compile=False, save_maps=False), "cpu")
    streamed = score_clips(scorer, clips, tmp_path / "out", progress=False)
    reference = _window_scores(model, clips, ckpt)
    for c in clips:
        np.testing.assert_allclose(streamed[c.name], reference[c.name], rtol=1e-5, atol=1e-5)


def test_a_frame_without_a_past_has_no_motion_evidence(tmp_path: Path) -> None:
    """A stream's first frame (its past is itself) gets the motion branch's normal mean, 0: its branch score is 0 and
    the fused map is the appearance branch's alone, in a stream and from its window; the frames after it are scored
    as before; hold-out statistics leave such frames out (NaN)."""
    rng = np.random.default_rng(2)
    clip = _clip(write_frames(tmp_path / "c", rng.integers(0, 255, (5, 32, 48, 3), dtype=np.uint8), ext=".png"))
    model = _random_motion_model()
    model.fusion = "sum"
    ckpt = {"input_size": [32, 48], "normalization": "imagenet"}
    scorer = Scorer(model, ckpt, ScoreConfig(batch_size=4, amp="off", compile=False, save_maps=False), "cpu")
    x = scorer.transform(torch.from_numpy(rng.integers(0, 255, (3, 3, 32, 48), dtype=np.uint8)))
    _, amap, branches = scorer(x, "s", 0)
    assert branches[0, 1] == 0 and branches[1:, 1].abs().min() > 0
    with torch.no_grad():
        window = torch.cat([x[:1]] * 3, 1)
        maps = model.branch_maps(window)
        appearance = (maps["appearance"] - model.branch_loc[0]) / model.branch_scale[0]
        np.testing.assert_allclose(amap[0].numpy(), appearance[0].numpy(), rtol=1e-5, atol=1e-5)  # sum: + 0
        np.testing.assert_allclose(model.anomaly_map(window)[0].numpy(), amap[0].numpy(), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model.fuse(maps)[0], amap[0])  # the self-predicted motion map, as before
    held = outputs(scorer, [clip], None, branches=True)
    motion = frame_scores(held["motion"])
    assert torch.isnan(motion[0]) and not torch.isnan(motion[1:]).any()
    model.set_branch_stats({b: frame_scores(m) for b, m in held.items()})
    torch.testing.assert_close(model.branch_loc[1], motion[1:].mean())


def test_a_range_inside_a_clip_reads_its_real_past_in_a_stream(tmp_path: Path) -> None:
    """A range that starts inside a clip (a hold-out, a shard) is scored after a context batch of its real past, and
    equals its windows; frames that do not follow the last ones scored start afresh (a gap)."""
    rng = np.random.default_rng(2)
    clip = _clip(write_frames(tmp_path / "c", rng.integers(0, 255, (12, 32, 48, 3), dtype=np.uint8), ext=".png"))
    model = _random_motion_model()
    ckpt = {"input_size": [32, 48], "normalization": "imagenet"}
    scorer = Scorer(model, ckpt, ScoreConfig(batch_size=4, amp="off", compile=False), "cpu")
    for ranges in ({"c": (7, 12)}, {"c": (1, 12)}):
        got = outputs(scorer, [clip], ranges)["scores"].numpy()
        np.testing.assert_allclose(got, _window_scores(model, [clip], ckpt, ranges)["c"], rtol=1e-5, atol=1e-5)
    frames = FrameTransform((32, 48), "imagenet")(next(iter(FrameStream([clip], None, batch_size=12)))["frames"])
    scorer.pasts.forget()
    whole = scorer(frames[:6], "c", 0)[0]
    after_gap = scorer(frames[8:10], "c", 8)[0]  # frames 6, 7 never came: frame 8 starts afresh
    fresh = Scorer(model, ckpt, ScoreConfig(batch_size=4, amp="off", compile=False), "cpu")(frames[8:10], "x", 0)[0]
    torch.testing.assert_close(after_gap, fresh)
    assert whole.shape == (6,)


def test_the_predictor_loss_weights_what_moves() -> None:
    """Where nothing moves the loss is STPM's; an error where the teacher's features change counts more than the
    same error on still background."""
    g = torch.Generator().manual_seed(0)
    t = {"a": torch.randn(2, 8, 6, 6, generator=g)}
    pred = {"a": t["a"] + 0.5 * torch.randn(2, 8, 6, 6, generator=g)}
    assert torch.allclose(motion_weighted_loss(t, t, pred), stpm_loss(t, pred))  # a still scene: weight 1
    last = {"a": t["a"].clone()}
    last["a"][:, :, 0, 0] = -t["a"][:, :, 0, 0]  # only position (0, 0) moves
    err_moving, err_still = ({"a": t["a"].clone()} for _ in range(2))
    err_moving["a"][:, :, 0, 0] += 1.0
    err_still["a"][:, :, 5, 5] += 1.0
    assert motion_weighted_loss(t, last, err_moving) > 10 * motion_weighted_loss(t, last, err_still)
    assert motion_weighted_loss(t, last, t) == 0


def test_motion_pool_averages_the_motion_map_over_cells(monkeypatch) -> None:
    """``model.motion_pool=3``: a lone cell of the motion map is shared with its 3 x 3 neighbours, a uniform map
    stays as it is (edges average only the cells inside), and appearance is untouched; checkpoints written before
    the key keep their unpooled motion map."""
    from vad.runtime.checkpoint import model_state, restore_model

    pooled = build_model(ModelConfig(teacher_weights="random", backbone="resnet18", levels=(1, 2), motion_pool=3))
    assert isinstance(pooled, MotionSTPM) and pooled.pool == 3
    lone = torch.zeros(1, 6, 6)
    lone[0, 2, 2] = 9.0
    for raw, expect_max in ((lone, 1.0), (torch.full((1, 6, 6), 2.0), 2.0)):
        monkeypatch.setattr(STPM, "pyramids_to_map", lambda self, t, s, size, raw=raw: raw.clone())
        x = torch.zeros(1, 9, 48, 48)
        maps = pooled.maps_from(*pooled.teacher_features(x), x)
        assert maps["motion"].shape == raw.shape and maps["motion"].max().item() == pytest.approx(expect_max)
        assert torch.equal(maps["appearance"], raw)
    assert maps["motion"].min().item() == pytest.approx(2.0)
    monkeypatch.undo()
    cfg = to_dict(ModelConfig(teacher_weights="random", backbone="resnet18", levels=(1, 2), motion_pool=3))
    del cfg["motion_pool"]  # a checkpoint written before the key
    assert restore_model({"config": {"model": cfg}, "model": model_state(pooled)}).pool == 1
    with pytest.raises(ValueError, match="motion_pool"):
        load_config(overrides=["model.motion_pool=2"])


def test_motion_levels_predict_the_finest_level_by_default() -> None:
    """``model.motion_levels``: ``finest`` (the default) predicts and scores the pyramid's finest level only, and its
    map is that level's discrepancy; ``all`` predicts every level; checkpoints written before the key predicted
    all; an unknown value is refused."""
    from vad.runtime.checkpoint import model_state, restore_model

    cfg = ModelConfig(teacher_weights="random", backbone="resnet18", levels=(1, 2), motion_pool=1)
    assert cfg.motion_levels == "finest"
    finest, every = (build_model(replace(cfg, motion_levels=v)).eval() for v in ("finest", "all"))
    x = torch.rand(2, 9, 64, 64)
    with torch.no_grad():
        for model, n in ((finest, 1), (every, 2)):
            past_t, t = model.teacher_features(x)
            assert list(model.predictor(past_t)) == list(t)[:n] and len(model.predictor.nets) == n
        past_t, t = finest.teacher_features(x)
        first = next(iter(t))
        expected = level_discrepancy(t[first], finest.predictor(past_t)[first])
        torch.testing.assert_close(finest.maps_from(past_t, t, x)["motion"], expected)
    state = to_dict(replace(cfg, motion_levels="all"))
    del state["motion_levels"]  # a checkpoint written before the key
    restored = restore_model({"config": {"model": state}, "model": model_state(every)})
    assert restored.motion_levels == "all" and len(restored.predictor.nets) == 2
    with pytest.raises(ValueError, match="motion_levels"):
        load_config(overrides=["model.motion_levels=coarsest"])


def test_fusion_standardises_each_branch_by_its_statistics() -> None:
    model = _random_motion_model()
    maps = {"appearance": torch.full((1, 2, 2), 3.0), "motion": torch.full((1, 2, 2), 3.0)}
    loc, scale = model.branch_loc, model.branch_scale
    z = [float((3.0 - loc[i]) / scale[i]) for i in range(2)]
    assert model.fusion == "max" and z[0] != z[1]  # the default
    assert torch.allclose(model.fuse(maps), torch.full((1, 2, 2), max(z)))
    model.fusion = "sum"
    assert torch.allclose(model.fuse(maps), torch.full((1, 2, 2), sum(z)))
    with pytest.raises(ValueError, match="at least 2"):
        model.set_branch_stats({"appearance": torch.ones(1), "motion": torch.ones(5)})
    fresh = build_model(ModelConfig(teacher_weights="random", backbone="resnet18", levels=(1, 2)))
    with pytest.raises(RuntimeError, match="no branch statistics"):
        fresh.fuse(maps)


def test_fusion_statistics_come_from_the_hold_out_frames(trained: Path, scene: Path) -> None:
    """The stored per-branch mean and deviation are those of the normal hold-out frames' scores (the tail of every
    training clip, windows reaching into their real past), recomputed here independently."""
    model, ckpt = load_model(trained / "model.pt")
    assert isinstance(model, MotionSTPM) and model.has_branch_stats
    clips = read_dataset("shanghaitech", scene, "train")
    _, val = holdout(clips, TINY.train.val_fraction)
    stream = FrameStream(clips, FrameTransform(tuple(ckpt["input_size"]), ckpt["normalization"]), batch_size=7,
                         ranges=val, window=model.window)
    per = {b: [] for b in model.branches}
    with torch.no_grad():
        for batch in stream:
            for b, m in model.branch_maps(batch["frames"]).items():
                per[b].append(frame_scores(m))
    for i, b in enumerate(model.branches):
        s = torch.cat(per[b])
        assert len(s) == sum(stop - start for start, stop in val.values())
        assert float(model.branch_loc[i]) == pytest.approx(float(s.mean()), rel=1e-4)
        assert float(model.branch_scale[i]) == pytest.approx(float(s.std()), rel=1e-3)


def _mover(n: int, speed: float, seed: int, h: int = 64, w: int = 96, x0: float | None = None) -> np.ndarray:
    """A textured static background and a sprite (a 14x8 figure) crossing at ``speed`` px/frame."""
    rng = np.random.default_rng(1000)  # one background for every clip
    bg = np.clip(110 + 40 * rng.standard_normal((h // 4, w // 4, 3)), 0, 255).repeat(4, 0).repeat(4, 1)
    noise = np.random.default_rng(seed)
    x = x0 if x0 is not None else noise.uniform(0, w - 8)
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        f = bg + noise.normal(0, 2, bg.shape)
        xi = int(round(x + speed * t)) % (w - 8)
        f[26:34, xi:xi + 8] = (200, 40, 40)
        f[34:40, xi + 1:xi + 7] = (40, 40, 160)
        out[t] = f.clip(0, 255).astype(np.uint8)
    return out


def test_a_trained_motion_model_scores_a_fast_mover_above_the_same_sprite_walking(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in range(3):
        write_video(root / "training" / "videos" / f"01_{i + 1:03d}.avi", _mover(30, (-1) ** i * 1.0, seed=i))
    cfg = replace(TINY, train=replace(TINY.train, epochs=5))
    run = tmp_path / "run"
    train(read_dataset("shanghaitech", root, "train"), cfg, run, device="cpu", progress=False)
    model, ckpt = load_model(run / "model.pt")
    scorer = Scorer(model, ckpt, ScoreConfig(batch_size=16, amp="off", compile=False, save_maps=False), "cpu")
    clips = [_clip(write_frames(tmp_path / name, _mover(24, speed, seed=7, x0=10), ext=".png"))
             for name, speed in (("walk", 1.0), ("fast", 5.0))]
    scores = score_clips(scorer, clips, tmp_path / "out", progress=False)
    walk, fast = scores["walk"][2:], scores["fast"][2:]  # after the first frames, whose past is frame 0
    # Fused scores are in hold-out standard deviations; the two clips differ only in the sprite's speed.
    assert np.median(fast) > np.median(walk) + 1.5, (np.round(walk, 2), np.round(fast, 2))
