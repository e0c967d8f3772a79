"""Training samples held in memory (vad.offline.trainset): the streamed samples exactly, the teacher's features kept,
long footage sampled, the memory limit, and the teacher's folded BatchNorms."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.helpers import SMALL
from vad.config import ModelConfig
from vad.errors import ConfigError
from vad.io import read_dataset
from vad.io.dataset import FrameStream, FrameTransform
from vad.models import build_model
from vad.offline.augment import ObjectShift
from vad.offline.session import _sampled, open_session
from vad.offline.trainset import TrainSet, teacher_for
from vad.runtime.reference import spread_runs


def _samples(batches) -> dict[tuple[str, int], torch.Tensor]:
    return {(c, int(i)): f for b in batches for c, i, f in zip(b["clip"], b["index"], b["frames"], strict=True)}


def test_samples_are_the_streamed_windows_exactly(shanghaitech_root) -> None:
    clips = read_dataset("shanghaitech", shanghaitech_root, "train")
    t = FrameTransform(size=(40, 56), normalization="lite0")
    runs = [(clips[0].name, (0, 5)), (clips[0].name, (9, 12)), (clips[1].name, (3, 8))]  # starts inside a clip too
    kept = TrainSet(clips, runs, t, window=3)
    assert len(kept) == 5 + 3 + 5
    streamed = {}
    for name, (a, b) in runs:  # FrameStream: a range that starts late reads its predecessors as context
        clip = next(c for c in clips if c.name == name)
        streamed |= _samples(FrameStream([clip], t, batch_size=4, ranges={name: (a, b)}, window=3))
    got = _samples(kept.epoch(batch_size=4, seed=0, epoch=0))
    assert got.keys() == streamed.keys()
    for key, x in streamed.items():
        assert torch.equal(got[key], x), key
    first = got[(clips[0].name, 0)]
    assert torch.equal(first[:3], first[6:]) and torch.equal(first[3:6], first[6:])  # frame 0 is its own past
    orders = [[int(i) for b in kept.epoch(4, seed=0, epoch=e) for i in b["index"]] for e in (0, 0, 1)]
    assert orders[0] == orders[1] != orders[2]  # a shuffle per epoch, repeatable


def test_kept_teacher_features_give_the_loss_of_the_teacher_run_again(shanghaitech_root) -> None:
    clips = read_dataset("shanghaitech", shanghaitech_root, "train")
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_height=48, teacher_weights="random")).eval()
    assert model.teacher_cache and model.window == 3
    t = FrameTransform(size=(48, 64), normalization="lite0")
    kept = TrainSet(clips, [(c.name, (0, 12)) for c in clips], t, model.window, model)
    batch = kept.batch(torch.arange(0, 36, 4))
    # A shift on a plain background moves the bright noise the synthetic frames have: some samples change
    shift = ObjectShift({c.name: torch.zeros(3, 48, 64) for c in clips}, 1.0, (0.5, 0.5, 0.5))
    x, changed = shift.apply(batch["frames"], batch["clip"], torch.Generator().manual_seed(0))
    assert 0 < len(changed) <= len(x)
    with torch.no_grad():
        fresh = model.loss(x)
        stale = model.loss(x, teacher=batch["teacher"])
        again = model.loss(x, teacher=teacher_for(model, x, batch["teacher"], changed))
    assert torch.allclose(again, fresh, rtol=1e-5) and not torch.allclose(stale, fresh, rtol=1e-3)
    with pytest.raises(ValueError, match="teacher"):
        TrainSet(clips, [(clips[0].name, (0, 4))], t, 1, build_model(ModelConfig(method="mkd", backbone="resnet18",
                                                                                 teacher_weights="random")))


def test_long_footage_is_sampled_in_spread_runs_and_the_stream_refuses_it() -> None:
    ranges = {"a": (0, 9000), "b": (0, 3000), "c": (100, 400)}
    runs = _sampled(ranges, 1000, True, "training")
    assert runs == spread_runs(ranges, 1000, 16)
    frames = [f for _, (s, e) in runs for f in range(s, e)]
    assert 900 <= len(frames) <= 1000
    for name, (a, b) in ranges.items():
        mine = [r for n, r in runs if n == name]
        assert all(a <= s < e <= b for s, e in mine)
        assert min(s for s, _ in mine) == a and max(e for _, e in mine) == b  # from the first frames to the last
    assert sum(1 for n, _ in runs if n == "a") > 2 * sum(1 for n, _ in runs if n == "b")  # in proportion
    assert _sampled(ranges, 20000, True, "training") == sorted(ranges.items())
    assert _sampled(ranges, None, False, "training") == sorted(ranges.items())
    with pytest.raises(ConfigError, match="train.max_frames=null"):
        _sampled(ranges, 1000, False, "training")


def test_a_cache_over_its_limit_is_refused_before_decoding(shanghaitech_root, tmp_path) -> None:
    clips = read_dataset("shanghaitech", shanghaitech_root, "train")
    cfg = replace(SMALL, model=replace(SMALL.model, teacher_weights="random"),
                  train=replace(SMALL.train, cache_gb=1e-4))
    with pytest.raises(ConfigError, match=r"train.cache needs .* GB .* train.cache_gb=0.0001"):
        open_session(clips, cfg, tmp_path / "run", "cpu", False)


def _teacher(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    teacher = build_model(ModelConfig(input_height=48, teacher_weights="random")).teacher.eval()
    for bn in (m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # statistics that matter
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return teacher


def test_a_folded_teacher_computes_the_same_features_and_follows_its_weights() -> None:
    teacher = _teacher(0)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        plain = teacher(x)
        keys = set(teacher.state_dict())
        teacher.fold()
        assert set(teacher.state_dict()) == keys  # the folded copy is not saved
        folded = teacher(x)
        for k in plain:
            assert torch.allclose(folded[k], plain[k], rtol=1e-4, atol=1e-4 * float(plain[k].abs().max()))
        state = _teacher(1).state_dict()
        teacher.load_state_dict(state)  # new weights: folded again
        assert "_folded" in teacher.__dict__
        after = teacher(x)
        teacher.__dict__.pop("_folded")
        expected = teacher(x)
    assert not torch.allclose(expected["blocks.4"], plain["blocks.4"])
    for k in expected:
        assert torch.allclose(after[k], expected[k], rtol=1e-4, atol=1e-4 * float(expected[k].abs().max()))
    student = build_model(ModelConfig(input_height=48, teacher_weights="random")).student
    with pytest.raises(ValueError, match="frozen"):
        student.fold()


def test_a_folded_teacher_under_bf16_is_as_close_to_float32_as_the_unfolded_one() -> None:
    """CPU bf16 training folds the teacher too (1.8x faster there): its bf16 features are no further from
    float32's than the unfolded teacher's bf16 features."""
    teacher = _teacher(2)
    x = torch.randn(4, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        exact = teacher(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = teacher(x)
        teacher.fold()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            folded = teacher(x)
    for k in exact:
        err = {name: float((f[k].float() - exact[k]).norm() / exact[k].norm()) for name, f in
               (("plain", plain), ("folded", folded))}
        assert folded[k].dtype == torch.bfloat16 and 0 < err["folded"] <= 1.25 * err["plain"] < 0.05, (k, err)


def test_a_trained_run_asked_again_decodes_nothing(shanghaitech_root, tmp_path, monkeypatch) -> None:
    import vad.offline.session
    import vad.offline.train

    clips = read_dataset("shanghaitech", shanghaitech_root, "train")
    cfg = replace(SMALL, model=replace(SMALL.model, teacher_weights="random"), train=replace(SMALL.train, epochs=1))
    made = []
    monkeypatch.setattr(vad.offline.session, "TrainSet", lambda *a, **k: made.append(1) or TrainSet(*a, **k))
    path = vad.offline.train.train(clips, cfg, tmp_path / "run", "cpu", progress=False)
    assert len(made) == 2  # training and hold-out samples
    assert vad.offline.train.train(clips, cfg, tmp_path / "run", "cpu", progress=False) == path
    assert len(made) == 2  # already trained: nothing decoded again
