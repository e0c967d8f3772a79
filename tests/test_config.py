"""Every setting is typed and checked when the config loads: a bad value stops any command within seconds, before
training, naming the key, the value and what is allowed."""

from __future__ import annotations

import time
import typing
from pathlib import Path

import pytest

from vad.cli import main
from vad.config import Backbone, Dataset, ModelConfig, RunConfig, apply_overrides, choices, from_dict, load_config
from vad.offline.pipeline import save_config

# One bad value per section: (override, what the message must say).
BAD = {
    "data": ("data.dataset=ucsd", "data.dataset: got 'ucsd'; expected one of shanghaitech, avenue"),
    "model": ("model.combine=max", "model.combine: got 'max'; expected one of product, sum"),
    "train": ("train.schedule=linear", "train.schedule: got 'linear'; expected one of onecycle, cosine, constant"),
    "score": ("score.map_stride=0", "score.map_stride: got 0; expected a value >= 1"),
    "postprocess": ("postprocess.normalisation=zscore",
                    "postprocess.normalisation: got 'zscore'; expected one of minmax, calibrated, none"),
    "eval": ("eval.threshold_percentile=150", "eval.threshold_percentile: got 150.0; expected a value > 0 and <= 100"),
    "render": ("render.colormap=nocolours", "render.colormap: got 'nocolours'; expected a matplotlib colormap name"),
}


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A run folder with a saved config (no model needed: the config is refused first)."""
    run = tmp_path / "run"
    save_config(RunConfig(), run / "config.yaml")
    return run


@pytest.mark.parametrize("section", sorted(BAD))
def test_bad_setting_stops_every_command_at_once(section: str, run_folder: Path, tmp_path: Path, capsys) -> None:
    override, message = BAD[section]
    out = tmp_path / "new"
    commands = [
        ["train", "--data", str(tmp_path), "--dataset", "folder", "--out", str(out)],
        ["run", "--config", "demo", "--data", str(tmp_path), "--out", str(out)],
        ["score", "--run", str(run_folder), "--input", str(tmp_path)],
        ["evaluate", "--run", str(run_folder)],
        ["render", "--run", str(run_folder)],
        ["demo", "--out", str(out)],
    ]
    for argv in commands:
        t0 = time.perf_counter()
        assert main([*argv, "--set", override]) == 2, argv
        assert time.perf_counter() - t0 < 10
        assert message in capsys.readouterr().err, argv
    assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize("section", sorted(BAD))
def test_bad_setting_in_a_yaml_file_names_the_file(section: str, tmp_path: Path, capsys) -> None:
    key, value = BAD[section][0].split("=")
    sec, name = key.split(".")
    path = tmp_path / "bad.yaml"
    path.write_text(f"{sec}:\n  {name}: {value}\n")
    assert main(["run", "--config", str(path), "--data", str(tmp_path), "--dataset", "folder",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"bad.yaml: {BAD[section][1]}" in err


@pytest.mark.parametrize(("override", "message"), [
    ("train.epochs=0", "train.epochs: got 0; expected a value >= 1"),
    ("train.lr=-1", "train.lr: got -1.0; expected a value > 0"),
    ("train.val_fraction=1", "train.val_fraction: got 1.0; expected a value > 0 and < 1"),
    ("train.amp=half", "train.amp: got 'half'; expected one of auto, bf16, fp16, off"),
    ("postprocess.sigma=-1", "postprocess.sigma: got -1.0; expected a value >= 0"),
    ("render.crf=60", "render.crf: got 60; expected a value >= 0 and <= 51"),
    ("render.layout=mosaic", "render.layout: got 'mosaic'; expected one of overlay, side_by_side"),
    ("model.method=padim", "model.method: got 'padim'; expected one of stpm, rstpm, mkd"),
    ("model.fusion=mean", "model.fusion: got 'mean'; expected one of sum, max"),
    ("model.motion_levels=coarse", "model.motion_levels: got 'coarse'; expected one of finest, all"),
    ("model.motion_pool=2", "model.motion_pool: got 2; expected one of 1, 3, 5"),
    ("model.motion_context=9", "model.motion_context: got 9; expected a value >= 1 and <= 8"),
    ("eval.fps=0", "eval.fps: got 0.0; expected a value > 0"),
    ("postprocess.sigma=1001", "postprocess.sigma: got 1001.0; expected a value >= 0 and <= 1000"),
    ("train.lr=.nan", "train.lr: got nan; expected a finite number > 0"),
    ("train.epochs=[1", "--set train.epochs=[1: the value '[1' is not valid YAML"),
])
def test_ranges_and_choices(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        apply_overrides(RunConfig(), [override])


def test_good_values_and_nullables_load() -> None:
    cfg = load_config(None, ["score.amp=off", "eval.fps=null", "model.input_width=null", "score.compile=null",
                             "render.colormap=turbo", "postprocess.sigma=0", "eval.threshold_percentile=100"])
    assert cfg.score.amp == "off" and cfg.eval.fps is None and cfg.render.colormap == "turbo"
    assert RunConfig().score.save_maps  # heatmaps by default: a plain train + score renders them


def test_choices_match_the_registries() -> None:
    from vad.io import DATASETS
    from vad.models import BACKBONES

    assert set(choices(Dataset)) == set(DATASETS)
    assert set(choices(Backbone)) == set(BACKBONES)
    from vad.models import METHODS

    assert choices(typing.get_type_hints(ModelConfig, include_extras=True)["method"]) == METHODS


def test_pyramid_levels_are_checked_with_the_settings_and_match_the_networks(tmp_path, capsys) -> None:
    import timm

    from vad.cli import main
    from vad.config import LEVEL_EXAMPLE, LEVELS
    from vad.models.backbones import BACKBONES

    for name, (low, high) in LEVELS.items():
        if name == "vgg16":
            assert (low, high) == (1, 13)  # VGG-16's convolutions (vad.models.mkd.VGGExpert)
            continue
        net = timm.create_model(BACKBONES[name].timm_name, pretrained=False, features_only=True)
        assert (low, high) == (0, len(net.feature_info) - 1), name
        assert load_config(None, [f"model.backbone={name}", f"model.levels={list(LEVEL_EXAMPLE[name])}"])
    # Out of range, repeated or empty: one error line before any file is written.
    for bad in ("[2,99]", "[-1]", "[3,2]", "[2,2]", "[]"):
        out = tmp_path / "run"
        assert main(["train", "--data", str(tmp_path), "--dataset", "folder", "--out", str(out),
                     "--set", f"model.levels={bad}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: model.levels: got"), err
        assert not out.exists()


def test_retired_key_says_what_replaced_it() -> None:
    with pytest.raises(ValueError, match="postprocess.reference_percentile was removed: calibrated scores now run"):
        from_dict(RunConfig, {"postprocess": {"reference_percentile": 99}})


def test_object_shift_default_follows_the_method() -> None:
    assert RunConfig().object_shift_rate == 0.5
    assert from_dict(RunConfig, {"model": {"method": "mkd"}}).object_shift_rate == 0
    assert from_dict(RunConfig, {"model": {"method": "mkd"}, "train": {"object_shift": 0.3}}).object_shift_rate == 0.3
    with pytest.raises(ValueError, match="train.object_shift"):
        from_dict(RunConfig, {"train": {"object_shift": 2}})


def test_an_older_run_folder_config_loses_retired_keys_with_a_note(tmp_path: Path, capsys) -> None:
    saved = tmp_path / "config.yaml"
    saved.write_text("postprocess:\n  sigma: 2.0\n  reference_percentile: 95.0\n")
    with pytest.raises(ValueError, match="was removed"):
        load_config(str(saved))  # a config a person wrote: refused
    cfg = load_config(str(saved), saved=True)
    assert cfg.postprocess.sigma == 2.0
    assert "reference_percentile is no longer used" in capsys.readouterr().err
