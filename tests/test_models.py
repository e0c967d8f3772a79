"""Backbones, weight loading and the STPM math."""

from __future__ import annotations

import typing

import matplotlib.cbook as cbook
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo

from vad.config import Backbone, ModelConfig, choices
from vad.models import (
    BACKBONES,
    METHODS,
    STPM,
    WeightsUnavailableError,
    build_backbone,
    build_model,
    frame_scores,
)
from vad.models.backbones import load_classifier
from vad.models.loss import level_discrepancy, stpm_loss
from vad.models.mkd import SCORES
from vad.models.stpm import COMBINE


@pytest.mark.parametrize(("name", "channels"), [
    ("resnet18", (64, 128, 256)),
    ("wide_resnet50_2", (256, 512, 1024)),
    ("efficientnet_lite0", (24, 40, 112)),
])
def test_pyramid_shapes_and_channels(name: str, channels: tuple[int, ...]) -> None:
    pyr = build_backbone(name, levels=(1, 2, 3), weights="random").eval()
    assert pyr.channels == channels and pyr.strides == (4, 8, 16)
    with torch.no_grad():
        feats = pyr(torch.randn(2, 3, 64, 96))
    assert list(feats) == list(pyr.names)
    for f, c, s in zip(feats.values(), pyr.channels, pyr.strides, strict=True):
        assert f.shape == (2, c, 64 // s, 96 // s)


def test_default_levels() -> None:
    assert build_backbone("resnet18", weights="random").names == ("layer1", "layer2", "layer3")  # the paper's
    lite = build_backbone("efficientnet_lite0", weights="random")
    assert lite.names == ("blocks.2", "blocks.4") and lite.strides == (8, 16)


def test_pyramid_prunes_unused_layers() -> None:
    full = sum(p.numel() for p in load_classifier("resnet18", "random").parameters())
    two = build_backbone("resnet18", levels=(1, 2), weights="random")
    assert sum(p.numel() for p in two.parameters()) < full / 4
    assert two.names == ("layer1", "layer2")


def test_bad_levels_raise() -> None:
    with pytest.raises(ValueError, match="levels"):
        build_backbone("resnet18", levels=(3, 1), weights="random")
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'"):
        build_backbone("resnet19", weights="random")


def _classify(model: torch.nn.Module, rgb: np.ndarray) -> str:
    x = torch.from_numpy(np.array(rgb[..., :3], dtype=np.float32)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        logits = model.eval()((x - 127.0) / 128.0)  # the Lite0 weights' normalisation
    return ImageNetInfo().index_to_description(int(logits.argmax()))


def test_lite0_weights_classify_real_photos() -> None:
    """The offline teacher is genuinely pretrained: it recognises photos shipped by installed packages."""
    model = load_classifier("efficientnet_lite0", "pretrained")
    hopper = mpimg.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    assert _classify(model, hopper) == "military uniform"
    assert _classify(model, load_sample_image("flower.jpg")) == "daisy"
    assert _classify(load_classifier("efficientnet_lite0", "random"), hopper) != "military uniform"


def test_resnet_without_weights_says_how_to_provide_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(WeightsUnavailableError, match="--teacher-weights") as err:
        build_backbone("resnet18", weights="pretrained", allow_download=False)
    assert "resnet18-f37072fd.pth" in str(err.value)


def test_resnet_weights_from_file_and_cache(tmp_path, monkeypatch) -> None:
    ref = load_classifier("resnet18", "random")
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    loaded = build_backbone("resnet18", weights=path)
    assert torch.equal(loaded.net.conv1.weight, ref.conv1.weight)
    # torchvision's cache location is used when the file is there (no download).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cache = tmp_path / "th" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(ref.state_dict(), cache / "resnet18-f37072fd.pth")
    cached = build_backbone("resnet18", weights="pretrained", allow_download=False)
    assert torch.equal(cached.net.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_bad_weights_file_is_named(tmp_path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="bad.pth: not a readable teacher weights file"):
        build_backbone("resnet18", weights=bad)
    other = tmp_path / "lite.pth"
    torch.save(load_classifier("efficientnet_lite0", "random").state_dict(), other)
    with pytest.raises(WeightsUnavailableError, match="do not fit resnet18"):
        build_backbone("resnet18", weights=other)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        build_backbone("resnet18", weights=tmp_path / "missing.pth")


def _tiny_stpm(combine: str = "product") -> STPM:
    return build_model(ModelConfig(backbone="resnet18", teacher_weights="random", combine=combine, motion=False))


def test_loss_is_zero_when_student_equals_teacher() -> None:
    model = _tiny_stpm()
    model.student.load_state_dict(model.teacher.state_dict())
    model.eval()
    with torch.no_grad():
        t, s = model.pyramids(torch.randn(2, 3, 64, 64))
        amap = model.anomaly_map(torch.randn(2, 3, 64, 64))
    assert float(stpm_loss(t, s)) == pytest.approx(0.0, abs=1e-10)
    assert float(amap.max()) == pytest.approx(0.0, abs=1e-10)


def test_loss_matches_definition() -> None:
    t = {"a": torch.randn(2, 4, 3, 3), "b": torch.randn(2, 5, 2, 2)}
    s = {"a": torch.randn(2, 4, 3, 3), "b": torch.randn(2, 5, 2, 2)}
    want = 0.0
    for k in t:
        nt = t[k] / t[k].norm(dim=1, keepdim=True)
        ns = s[k] / s[k].norm(dim=1, keepdim=True)
        want += float((0.5 * ((nt - ns) ** 2).sum(1)).mean())
    assert float(stpm_loss(t, s)) == pytest.approx(want, rel=1e-5)
    # batch-averaged, not summed: duplicating the batch leaves the loss unchanged
    t2 = {k: torch.cat([v, v]) for k, v in t.items()}
    s2 = {k: torch.cat([v, v]) for k, v in s.items()}
    assert float(stpm_loss(t2, s2)) == pytest.approx(want, rel=1e-5)
    d = level_discrepancy(t["a"], s["a"])
    assert d.shape == (2, 3, 3) and float(d.min()) >= 0 and float(d.max()) <= 2 + 1e-6


@pytest.mark.parametrize("combine", ["product", "sum"])
def test_anomaly_map_contract(combine: str) -> None:
    model = _tiny_stpm(combine).eval()
    assert model.combine_rule == combine
    x = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        amap = model.anomaly_map(x)
        scores, scored_map = model.score_and_map(x)
    assert amap.shape == (3, 16, 24)
    assert torch.isfinite(amap).all() and (amap >= 0).all()
    assert torch.allclose(scored_map, amap)
    assert torch.equal(scores, torch.stack([m.max() for m in scored_map]))  # the frame score: the map's peak


def test_frame_score_is_each_maps_maximum() -> None:
    amap = torch.tensor([[[0.0, 1.0], [3.0, 2.0]],
                         [[-1.0, -4.0], [-2.0, -3.0]],  # all negative (RSTPM's log-odds): -1, not 0
                         [[7.0, 7.0], [0.5, 7.0]]])
    assert frame_scores(amap).tolist() == [3.0, -1.0, 7.0]
    assert frame_scores(torch.zeros(0, 4, 5)).shape == (0,)


def test_product_and_sum_combine() -> None:
    maps = {"a": torch.full((1, 2, 2), 2.0), "b": torch.full((1, 1, 1), 3.0)}
    assert torch.allclose(STPM.combine(maps, (4, 4), "product"), torch.full((1, 4, 4), 6.0))
    assert torch.allclose(STPM.combine(maps, (4, 4), "sum"), torch.full((1, 4, 4), 5.0))
    with pytest.raises(ValueError, match="unknown combine 'max'"):
        STPM.combine(maps, (4, 4), "max")


def test_teacher_is_frozen_and_stays_in_eval_mode() -> None:
    model = _tiny_stpm().train()
    assert not model.teacher.training and model.student.training
    assert not any(p.requires_grad for p in model.teacher.parameters())
    t, s = model.pyramids(torch.randn(2, 3, 64, 64))
    stpm_loss(t, s).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert any(p.grad is not None for p in model.student.parameters())


def test_position_stats() -> None:
    model = _tiny_stpm().eval()
    amap = torch.rand(2, 4, 5)
    assert not model.has_position_stats
    with pytest.raises(RuntimeError, match="no per-position statistics"):
        model.standardise_map(amap)
    model.set_position_stats(torch.full((4, 5), 0.5), torch.full((4, 5), 2.0))
    assert model.has_position_stats
    assert torch.allclose(model.standardise_map(amap), (amap - 0.5) / 2.0)
    with pytest.raises(ValueError, match=r"map size \(3, 5\) != position statistics size \(4, 5\)"):
        model.standardise_map(torch.rand(2, 3, 5))
    with pytest.raises(ValueError, match="positive scale"):
        model.set_position_stats(torch.zeros(4, 5), torch.zeros(4, 5))


def test_model_choices_match_the_config_types() -> None:
    """The config loader's Literal types and the models' tables list the same choices: every setting the loader
    accepts builds a model, and every model can be asked for (build_model has no check of its own)."""
    hints = typing.get_type_hints(ModelConfig, include_extras=True)
    assert choices(hints["method"]) == METHODS
    assert set(choices(Backbone)) == set(BACKBONES)
    assert set(choices(hints["combine"])) == set(COMBINE)
    assert set(choices(hints["mkd_score"])) == set(SCORES)
