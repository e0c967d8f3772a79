"""Training, checkpoints, resume and scoring on a tiny synthetic scene."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch

from vad.checkpoint import CheckpointError, load_model
from vad.config import ModelConfig, RunConfig, ScoreConfig, TrainConfig, from_dict, to_dict
from vad.io import read_dataset
from vad.score import Scorer, score_clips
from vad.train import ResumeError, holdout, train, train_per_scene

TINY = RunConfig(
    model=ModelConfig(input_height=96),  # tiny 48x64 frames upsampled: the stride-16 level needs room
    train=TrainConfig(epochs=6, batch_size=8, lr=3e-3, seed=0),
    score=ScoreConfig(batch_size=16),
)
SMALL = replace(TINY, model=replace(TINY.model, input_height=48))  # for tests that check mechanics, not accuracy


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return helpers.make_anomaly_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def trained(scene: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    train(read_dataset("shanghaitech", scene, "train"), TINY, run, device="cpu", progress=False)
    return run


def test_trained_stpm_scores_pasted_anomaly_above_normal(scene: Path, trained: Path) -> None:
    model, ckpt = load_model(trained / "model.pt")
    assert ckpt["input_size"] == [96, 128]
    clips = read_dataset("shanghaitech", scene, "test")
    for calibrated in (False, True):
        scorer = Scorer(model, ckpt, replace(TINY.score, per_position=calibrated), device="cpu")
        scores = score_clips(scorer, clips, trained / f"scores_{calibrated}", progress=False)
        s = np.concatenate([scores[c.name] for c in clips])
        y = np.concatenate([c.labels for c in clips]).astype(bool)
        assert s[y].min() > s[~y].max(), f"calibrated={calibrated}: anomalous {s[y].min()} <= normal {s[~y].max()}"


def test_training_log_and_checkpoints(trained: Path) -> None:
    lines = (trained / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == TINY.train.epochs
    assert {"best.pt", "last.pt"} <= {p.name for p in (trained / "checkpoints").iterdir()}
    ckpt = torch.load(trained / "model.pt", weights_only=True)  # a stranger's file cannot run code
    assert ckpt["config"] == to_dict(TINY)
    assert ckpt["model"]["pos_loc"].shape == (12, 16)  # finest-level (stride 8) grid of the 96x128 input


def test_checkpoint_round_trip_gives_identical_scores(scene: Path, trained: Path) -> None:
    a, ckpt = load_model(trained / "model.pt")
    b, _ = load_model(trained / "model.pt")
    x = torch.randn(4, 3, 96, 128)
    sa, sb = Scorer(a, ckpt, TINY.score, "cpu"), Scorer(b, ckpt, TINY.score, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(sa(x), sb(x), strict=True))


def test_bad_checkpoints_raise(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a vad checkpoint"):
        load_model(tmp_path / "other.pt")


def test_scoring_writes_files_and_skips_done_clips(scene: Path, trained: Path) -> None:
    model, ckpt = load_model(trained / "model.pt")
    clips = read_dataset("shanghaitech", scene, "test")
    out = trained / "score_run"
    scorer = Scorer(model, ckpt, replace(TINY.score, save_maps=True, map_stride=8), device="cpu")
    first = score_clips(scorer, clips, out, progress=False)
    for c in clips:
        assert np.load(out / "scores" / f"{c.name}.npy").shape == (c.num_frames,)
        maps = np.load(out / "maps" / f"{c.name}.npy")
        assert maps.shape == (c.num_frames, 12, 16) and maps.dtype == np.float16
        pooled_max = maps.astype(np.float32).max(axis=(1, 2))
        assert (pooled_max <= first[c.name] * 1.01 + 1e-3).all()  # area-pooled: never above the full map's max
        assert np.corrcoef(pooled_max, first[c.name])[0, 1] > 0.9
    mtime = (out / "scores" / f"{clips[0].name}.npy").stat().st_mtime_ns
    again = score_clips(scorer, clips, out, progress=False)
    assert (out / "scores" / f"{clips[0].name}.npy").stat().st_mtime_ns == mtime
    assert all(np.array_equal(first[k], again[k]) for k in first)


def test_resume_after_interruption_matches_uninterrupted(scene: Path, tmp_path: Path, monkeypatch) -> None:
    clips = read_dataset("shanghaitech", scene, "train")[:2]
    cfg = replace(SMALL, train=replace(SMALL.train, epochs=3))
    train(clips, cfg, tmp_path / "a", device="cpu", progress=False)

    helpers.interrupt_training_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(clips, cfg, tmp_path / "b", device="cpu", progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "b" / "model.pt").exists()
    train(clips, cfg, tmp_path / "b", device="cpu", progress=False)
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "b" / "train_log.jsonl").read_text().splitlines()) == 3

    with pytest.raises(ResumeError, match="different config"):
        train(clips, replace(cfg, train=replace(cfg.train, lr=1e-2)), tmp_path / "b", device="cpu", progress=False)


def test_same_seed_same_model(scene: Path, tmp_path: Path) -> None:
    clips = read_dataset("shanghaitech", scene, "train")[:2]
    cfg = replace(SMALL, train=replace(SMALL.train, epochs=1, position_stats=False))
    for name in ("a", "b"):
        train(clips, cfg, tmp_path / name, device="cpu", progress=False)
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_per_scene_models(shanghaitech_root: Path, tmp_path: Path) -> None:
    clips = read_dataset("shanghaitech", shanghaitech_root, "train")
    cfg = replace(SMALL, train=replace(SMALL.train, epochs=2, position_stats=False))
    paths = train_per_scene(clips, cfg, tmp_path, device="cpu", progress=False)
    assert sorted(paths) == ["01", "02"]
    assert torch.load(paths["01"], weights_only=True)["train_clips"] == ["01_001", "01_002"]
    assert torch.load(paths["02"], weights_only=True)["train_clips"] == ["02_001"]


def test_holdout_is_the_tail_of_every_clip(scene: Path) -> None:
    clips = read_dataset("shanghaitech", scene, "train")
    tr, va = holdout(clips, 0.25)
    assert tr["01_001"] == (0, 18) and va["01_001"] == (18, 24)
    with pytest.raises(ValueError, match="val_fraction"):
        holdout(clips, 1.0)


def test_config_round_trip_and_errors() -> None:
    cfg = RunConfig(model=ModelConfig(levels=(1, 2)), train=TrainConfig(lr=0.4, optimizer="sgd"))
    assert from_dict(RunConfig, to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="unknown config key train.epoch"):
        from_dict(RunConfig, {"train": {"epoch": 3}})
    with pytest.raises(ValueError, match="train.epochs: expected an integer"):
        from_dict(RunConfig, {"train": {"epochs": "many"}})


def test_overrides() -> None:
    from vad.config import apply_overrides

    cfg = apply_overrides(RunConfig(), ["train.epochs=5", "model.levels=[1, 2]", "model.input_width=320",
                                        "train.lr=4e-1"])
    assert cfg.train.epochs == 5 and cfg.model.levels == (1, 2) and cfg.model.input_width == 320
    assert apply_overrides(RunConfig(), ["score.amp=off", "train.amp=off"]).score.amp == "off"  # YAML's off = False
    assert cfg.train.lr == pytest.approx(0.4)
    with pytest.raises(ValueError, match="unknown config key 'train.epoch'"):
        apply_overrides(RunConfig(), ["train.epoch=5"])
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        apply_overrides(RunConfig(), ["train.epochs"])
    with pytest.raises(ValueError, match="expected an integer"):
        apply_overrides(RunConfig(), ["train.epochs=five"])


def test_bf16_scoring_keeps_the_ranking(scene: Path, trained: Path) -> None:
    """Autocast (bf16; on CPU here, the same dtype a GPU uses) must not reorder frames."""
    from scipy.stats import spearmanr

    model, ckpt = load_model(trained / "model.pt")
    clips = read_dataset("shanghaitech", scene, "test")
    fp32 = score_clips(Scorer(model, ckpt, replace(TINY.score, amp="off"), "cpu"), clips, trained / "fp32",
                       progress=False)
    bf16 = score_clips(Scorer(model, ckpt, replace(TINY.score, amp="bf16"), "cpu"), clips, trained / "bf16",
                       progress=False)
    a = np.concatenate([fp32[c.name] for c in clips])
    b = np.concatenate([bf16[c.name] for c in clips])
    assert spearmanr(a, b).statistic > 0.95
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()


def test_model_keeps_normal_validation_scores(trained: Path) -> None:
    ckpt = torch.load(trained / "model.pt", weights_only=True)
    raw, cal = ckpt["val_scores"]["raw"], ckpt["val_scores"]["per_position"]
    n_val = 4 * round(24 * TINY.train.val_fraction)  # the tail of each of the 4 training clips
    assert raw.shape == cal.shape == (n_val,) and bool((raw >= 0).all())


def test_resume_with_another_process_count_is_refused(scene: Path, tmp_path: Path) -> None:
    cfg = replace(SMALL, train=replace(SMALL.train, epochs=1, position_stats=False))
    clips = read_dataset("shanghaitech", scene, "train")
    train(clips, cfg, tmp_path, device="cpu", progress=False)
    ck = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ck["processes"] == 1
    torch.save({**ck, "processes": 2}, tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(ResumeError, match="trained by 2 process"):
        train(clips, cfg, tmp_path, device="cpu", progress=False)
