"""The three methods behind one interface: shapes, losses, pseudo-anomalies, VGG weights, training that separates
a pasted anomaly from normal frames, checkpoint round trips and RSTPM's staged resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import helpers
from tests.helpers import AMPS, TINY, frame_auc, tiny
from vad.config import ModelConfig, RunConfig, from_dict, to_dict
from vad.io import read_dataset
from vad.models import METHODS, MKD, RSTPM, STPM, WeightsUnavailableError, build_model, frame_scores
from vad.models.mkd import VGGExpert, build_vgg_expert, mkd_losses
from vad.models.pseudo import blob_mask, mask_to_grid, pseudo_anomalies
from vad.offline.train import train
from vad.runtime.batches import score_clips
from vad.runtime.checkpoint import load_model
from vad.runtime.reference import holdout
from vad.runtime.scorer import Scorer


@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_map_scale(method: str) -> None:
    model = build_model(ModelConfig(method=method, teacher_weights="random", motion=False)).eval()
    x = torch.randn(3, 3, 64, 96)
    model.fit_normal([x])
    with torch.no_grad():
        scores, amap = model.score_and_map(x)
    assert scores.shape == (3,) and amap.shape == (3, 8, 12) and model.map_size(x) == (8, 12)
    assert scores.dtype == amap.dtype == torch.float32
    assert torch.isfinite(amap).all()
    if method != "rstpm":  # RSTPM's map is log-odds; the others are losses
        assert bool((amap >= 0).all())
    # the map shares the score's scale: its maximum is the frame score (what the renderer's colours rely on)
    assert torch.allclose(frame_scores(amap), scores, rtol=1e-5)


def test_mkd_scores() -> None:
    """``mean`` is the paper's frame score (the frame's total loss); ``max`` the peak of the per-position loss."""
    x = torch.randn(2, 3, 64, 96)
    mean = build_model(ModelConfig(method="mkd", mkd_score="mean", teacher_weights="random")).eval()
    peak = build_model(ModelConfig(method="mkd", mkd_score="max", teacher_weights="random")).eval()
    mean.fit_normal([x])
    peak.load_state_dict(mean.state_dict())
    with torch.no_grad():
        e, c = mean.pyramids(x)
        s_mean, _ = mean.score_and_map(x)
        s_max, amap = peak.score_and_map(x)
        pos = peak.position_map(e, c, (8, 12))
    assert torch.allclose(s_mean, mkd_losses(e, c, 0.5, mean.value_scale), rtol=1e-5)
    assert torch.allclose(s_max, pos.amax((1, 2)), rtol=1e-5)
    assert amap.requires_grad is False  # the input gradient stays inside score_and_map


class _Scaled(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: self.factor * v for k, v in self.net(x).items()}


def test_mkd_value_term_is_scale_free() -> None:
    """Scaling the expert's activations by 100 (and the cloner's outputs with them, as a cloner trained on them would
    be) leaves the loss and the scores unchanged once the statistics are refit on the same training frames; the
    paper's raw MSE grows 10,000-fold."""
    torch.manual_seed(0)
    model = MKD(VGGExpert((3, 5)), direction_weight=0.5).eval()
    train_x, x = torch.randn(4, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with pytest.raises(RuntimeError, match="fit_normal"):
        model.loss(x)
    model.fit_normal([train_x[:2], train_x[2:]])
    with torch.no_grad():
        before, raw = float(model.loss(x)), mkd_losses(*model.pyramids(x), 0.0)
    scores, _ = model.score_and_map(x)
    model.expert, model.cloner = _Scaled(model.expert, 100.0), _Scaled(model.cloner, 100.0)
    model.fit_normal([train_x[:2], train_x[2:]])
    with torch.no_grad():
        after, raw_after = float(model.loss(x)), mkd_losses(*model.pyramids(x), 0.0)
    scaled_scores, _ = model.score_and_map(x)
    assert after == pytest.approx(before, rel=1e-4) and before > 0
    assert torch.allclose(scaled_scores, scores, rtol=1e-4)
    # the raw value term (lambda 0) grows with the square of the scale
    assert torch.allclose(raw_after, 10_000 * raw, rtol=1e-3)


def test_frozen_parts_stay_frozen_per_stage() -> None:
    model = build_model(ModelConfig(method="rstpm", teacher_weights="random")).train()
    assert model.stage == "pairs" and model.student.training and model.reconstructor.training
    assert not model.teacher.training and not model.disc.training
    assert not any(p.requires_grad for p in model.disc.parameters())
    model.set_stage("disc")
    assert model.disc.training and not model.student.training and not model.reconstructor.training
    assert not any(p.requires_grad for p in [*model.student.parameters(), *model.reconstructor.parameters()])
    loss = model.loss(torch.randn(2, 3, 64, 64), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for p in model.disc.parameters())
    assert all(p.grad is None for p in model.student.parameters())
    with pytest.raises(ValueError, match="no training stage 'nope'"):
        model.set_stage("nope")


def test_losses() -> None:
    model = build_model(ModelConfig(method="rstpm", teacher_weights="random")).eval()
    model.student.load_state_dict(model.teacher.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        t, s, r = model.pyramids(x)
    from vad.models.loss import stpm_loss

    assert float(stpm_loss(t, s)) < 1e-10  # a student equal to the teacher has nothing to learn
    assert float(stpm_loss(t, r)) > 0.01  # an untrained reconstruction does
    # MKD: value + lambda * direction; a scaled copy has zero direction loss and a known value loss
    e = {"a": torch.randn(2, 4, 5, 5)}
    assert torch.allclose(mkd_losses(e, e, 0.5), torch.zeros(2), atol=1e-6)
    c = {"a": 2 * e["a"]}
    expected = e["a"].pow(2).flatten(1).mean(1)
    assert torch.allclose(mkd_losses(e, c, 0.5), expected, atol=1e-5)
    c = {"a": -e["a"]}  # opposite direction: 1 - cos = 2
    assert torch.allclose(mkd_losses(e, c, 0.5), 4 * expected + 0.5 * 2, atol=1e-4)


def test_pseudo_anomalies_are_repeatable_and_masked() -> None:
    x = torch.randn(16, 3, 48, 64)
    a, ma = pseudo_anomalies(x, torch.Generator().manual_seed(3))
    b, mb = pseudo_anomalies(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert ma.shape == (16, 1, 48, 64) and set(ma.unique().tolist()) <= {0.0, 1.0}
    altered = ma.flatten(1).amax(1) > 0
    assert 2 <= int(altered.sum()) <= 14  # about half of the frames
    changed = (a != x).any(1, keepdim=True)
    assert not bool((changed & (ma == 0)).any())  # nothing changes outside the mask
    assert torch.equal(a[~altered], x[~altered])
    grid = mask_to_grid(ma, (6, 8))
    assert grid.shape == (16, 6, 8) and float(grid.min()) >= 0 and float(grid.max()) <= 1
    assert torch.allclose(grid.mean((1, 2)), ma.mean((1, 2, 3)), atol=1e-6)
    assert blob_mask(10, 7, torch.Generator().manual_seed(0)).sum() > 0


def test_vgg16_expert_hints_and_weights(tmp_path: Path) -> None:
    import torchvision

    expert = VGGExpert()
    assert expert.names == ("conv3", "conv6", "conv9", "conv12")
    assert expert.strides == (2, 4, 8, 16) and expert.channels == (128, 256, 512, 512)
    out = expert(torch.randn(1, 3, 32, 32))
    assert [tuple(v.shape[1:]) for v in out.values()] == [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    # torchvision's VGG-16 state dict loads as is (here the first convs of a random one, saved to a file)
    ref = torchvision.models.vgg16().features[:3]
    state = {f"features.{k}": v for k, v in ref.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # unrelated keys in a full checkpoint are ignored
    torch.save(state, tmp_path / "vgg.pth")
    loaded = build_vgg_expert((2,), str(tmp_path / "vgg.pth"), allow_download=False)
    x = torch.randn(1, 3, 16, 16)
    assert torch.allclose(loaded(x)["conv2"], torch.relu(ref(x)), atol=1e-6)
    with pytest.raises(WeightsUnavailableError, match="vgg16"):
        build_vgg_expert((3,), str(tmp_path / "vgg.pth"), allow_download=False)  # conv3 is not in the file
    with pytest.raises(ValueError, match="MKD's expert only"):
        build_model(ModelConfig(method="stpm", backbone="vgg16", teacher_weights="random"))
    model = build_model(ModelConfig(method="mkd", backbone="vgg16", teacher_weights="random", levels=(3, 5)))
    assert isinstance(model, MKD) and model.expert.names == ("conv3", "conv5")
    with pytest.raises(ValueError, match="hint strides >= 2; got \\(1, 2\\)"):  # conv2 is at full resolution
        build_model(ModelConfig(method="mkd", backbone="vgg16", teacher_weights="random", levels=(2, 4)))


def test_bad_method_settings_are_named() -> None:
    """A config names a bad method setting when it loads; a model built in Python refuses bad arguments itself."""
    for section, key, value in [("model", "method", "nope"), ("model", "mkd_score", "median"),
                                ("model", "combine", "max"), ("model", "direction_weight", -1.0),
                                ("train", "disc_epochs", 0)]:
        data = to_dict(tiny("rstpm"))
        data[section][key] = value
        with pytest.raises(ValueError, match=f"{section}.{key}: got {value!r}; expected"):
            from_dict(RunConfig, data)
    with pytest.raises(ValueError, match="unknown model.mkd_score 'median'"):
        MKD(VGGExpert((3,)), score="median")
    with pytest.raises(ValueError, match="direction_weight must be >= 0"):
        MKD(VGGExpert((3,)), direction_weight=-1)


@pytest.mark.parametrize("amp", AMPS)
def test_trained_method_separates_pasted_anomaly(scene: Path, trained_method: tuple[str, Path], tmp_path: Path,
                                                 amp: str) -> None:
    method, run = trained_method
    model, ckpt = load_model(run / "model.pt")
    assert type(model) is {"rstpm": RSTPM, "mkd": MKD, "stpm": STPM}[method]
    clips = read_dataset("shanghaitech", scene, "test")
    scores = score_clips(Scorer(model, ckpt, replace(TINY.score, amp=amp), "cpu"), clips, tmp_path, progress=False)
    auc = frame_auc(scores, clips)
    assert auc >= 0.95, f"{method}, amp={amp}: frame AUC {auc:.3f}"
    # the normal reference for thresholds comes from the same method's scores
    assert ckpt["val_scores"]["raw"].shape[0] > 0 and bool(torch.isfinite(ckpt["val_scores"]["raw"]).all())


def test_training_log_has_every_stage(trained_method: tuple[str, Path]) -> None:
    import json

    method, run = trained_method
    stages = [json.loads(ln)["stage"] for ln in (run / "train_log.jsonl").read_text().splitlines()]
    t = TINY.train
    expected = ["pairs"] * t.epochs + ["disc"] * t.disc_epochs if method == "rstpm" else ["cloner"] * t.epochs
    assert stages == expected


def test_checkpoint_reproduces_the_trained_models_scores(scene: Path, trained_method: tuple[str, Path],
                                                         tmp_path: Path) -> None:
    """The model rebuilt from model.pt alone scores the hold-out frames exactly as the trained model did in memory
    before it was saved (the normal reference it stored)."""
    method, run = trained_method
    model, ckpt = load_model(run / "model.pt")
    clips = read_dataset("shanghaitech", scene, "train")[:1]  # the stored reference starts with its hold-out
    scores = score_clips(Scorer(model, ckpt, replace(TINY.score, amp="off"), "cpu"), clips, tmp_path, progress=False)
    _, held_out = holdout(clips, TINY.train.val_fraction)
    rescored = scores[clips[0].name][slice(*held_out[clips[0].name])]
    assert len(rescored) == round(24 * TINY.train.val_fraction)  # the tail of a 24-frame clip
    stored = ckpt["val_scores"]["raw"].numpy()[:len(rescored)]
    np.testing.assert_allclose(rescored, stored, rtol=1e-5, atol=1e-6 * float(np.abs(stored).max()), err_msg=method)


def test_rstpm_resume_across_the_stage_boundary(scene: Path, tmp_path: Path, monkeypatch) -> None:
    """Interrupted right after the pairs stage, RSTPM resumes into the discriminative stage from the selected
    pairs and ends with the same model as an uninterrupted run."""
    clips = read_dataset("shanghaitech", scene, "train")[:2]
    cfg = replace(tiny("rstpm"), model=replace(TINY.model, method="rstpm", input_height=48),
                  train=replace(TINY.train, epochs=2, disc_epochs=2))
    train(clips, cfg, tmp_path / "a", device="cpu", progress=False)

    helpers.interrupt_training_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(clips, cfg, tmp_path / "b", device="cpu", progress=False)
    monkeypatch.undo()
    train(clips, cfg, tmp_path / "b", device="cpu", progress=False)
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rstpm_log_odds_stay_float32_under_bf16_autocast() -> None:
    model = build_model(ModelConfig(method="rstpm", teacher_weights="random")).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores, amap = model.score_and_map(torch.randn(2, 3, 64, 64))
    assert amap.dtype == torch.float32
    assert bool((amap.to(torch.bfloat16).float() != amap).any())  # not rounded to bf16 (which ties frame scores)


def test_onecycle_too_short_names_the_stage_option(scene: Path, tmp_path: Path) -> None:
    clips = read_dataset("shanghaitech", scene, "train")[:2]  # 38 training frames: 3 steps per epoch at batch 16
    cfg = replace(tiny("rstpm"), train=replace(TINY.train, epochs=2, disc_epochs=1, batch_size=16))
    with pytest.raises(ValueError, match="stage 'disc' has 3 .*raise train.disc_epochs"):
        train(clips, cfg, tmp_path, device="cpu", progress=False)
    assert not (tmp_path / "checkpoints").exists()  # refused before any training


def test_mkd_score_is_applied_when_scoring(scene: Path, tmp_path: Path) -> None:
    """``model.mkd_score`` is a scoring setting: training again with it keeps the trained model untouched; scoring
    with it changes the scores, against a normal reference fitted for it on the hold-out, never the mean's."""
    from vad.offline.pipeline import save_config, score_stage, with_data
    from vad.runs import RunFolder, read_manifest

    clips = read_dataset("shanghaitech", scene, "train")[:2]
    base = with_data(replace(tiny("mkd"), model=replace(TINY.model, method="mkd", input_height=48),
                             train=replace(TINY.train, epochs=1, schedule="constant")), scene, "shanghaitech")
    train(clips, base, tmp_path, device="cpu", progress=False)
    save_config(base, tmp_path / "config.yaml")
    first = (tmp_path / "model.pt").read_bytes()
    peak = replace(base, model=replace(base.model, mkd_score="max"))
    train(clips, peak, tmp_path, device="cpu", progress=False)
    assert (tmp_path / "model.pt").read_bytes() == first  # nothing retrained or rewritten
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 1
    test = read_dataset("shanghaitech", scene, "test")[:1]
    mean = score_stage(tmp_path, test, base, device="cpu")[test[0].name]
    peaks = score_stage(tmp_path, test, peak, device="cpu")[test[0].name]
    assert not np.allclose(mean, peaks)
    run = RunFolder(tmp_path)
    record = read_manifest(run)[test[0].name]
    assert record.scored_with["scoring"]["mkd_score"] == "max"
    fitted = np.load(run.normal_scores(record.reference))["scores"]
    _, ckpt = load_model(tmp_path / "model.pt")
    assert len(fitted) == len(ckpt["val_scores"]["raw"]) and not np.allclose(fitted, ckpt["val_scores"]["raw"])
