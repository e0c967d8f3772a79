from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vad.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_inspect_lists_clips(shanghaitech_root, capsys):
    assert main(["inspect", "--data", str(shanghaitech_root), "--dataset", "shanghaitech", "--decode"]) == 0
    out = capsys.readouterr().out
    assert "01_0001" in out and "3 clips, 48 frames" in out and "all readable" in out


def test_inspect_errors_exit_nonzero_with_message(tmp_path, capsys):
    assert main(["inspect", "--data", str(tmp_path / "missing"), "--dataset", "avenue"]) == 2
    assert "missing: Avenue root not found" in capsys.readouterr().err
    bad = tmp_path / "raw"
    bad.mkdir()
    (bad / "broken.avi").write_bytes(b"not really a video" * 20)
    assert main(["inspect", "--data", str(bad), "--dataset", "folder"]) == 2
    assert "broken.avi: cannot be opened as a video" in capsys.readouterr().err


def test_unknown_subcommand_and_help():
    with pytest.raises(SystemExit) as err:
        main(["frobnicate"])
    assert err.value.code == 2
    out = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "demo", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "example:" in out and "--out" in out


@pytest.mark.slow
def test_demo_generates_and_checks_the_scene(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "data" / "scene.json").is_file()
    assert "4 training videos, 4 labelled test clips" in out
    assert main(["demo", "--out", str(tmp_path)]) == 0  # second run reuses the data
    assert "reusing" in capsys.readouterr().out


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    import helpers

    base = tmp_path_factory.mktemp("e2e")
    data = helpers.make_anomaly_scene(base / "data", n_train=2)
    run = base / "run"
    tiny = ["model.input_height=96", "train.epochs=6", "train.batch_size=8", "train.lr=3e-3"]
    assert main(["train", "--data", str(data), "--dataset", "shanghaitech", "--out", str(run), "--set", *tiny]) == 0
    assert main(["score", "--run", str(run), "--data", str(data), "--dataset", "shanghaitech",
                 "--set", "score.save_maps=true"]) == 0
    return run


def test_train_then_score_end_to_end(scored_run, capsys):
    import helpers
    import numpy as np

    run = scored_run
    assert (run / "model.pt").is_file() and (run / "config.yaml").is_file()
    scores = np.load(run / "scores" / "01_0001.npy")
    assert scores.shape == (16,) and np.isfinite(scores).all()
    assert np.load(run / "maps" / "01_0001.npy").shape[0] == 16
    # raw input (unlabelled): a video file
    video = helpers.write_video(run.parent / "cam3.avi", helpers.frames(7))
    assert main(["score", "--run", str(run), "--input", str(video)]) == 0
    assert "scored 16 frames" in capsys.readouterr().out
    assert np.load(run / "scores" / "cam3.npy").shape == (16,)


def test_train_and_score_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--dataset", "shanghaitech",
                 "--out", str(tmp_path / "run")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--dataset", "shanghaitech", "--out", str(tmp_path / "r"),
                 "--set", "train.epoch=3"]) == 2
    assert "unknown config key 'train.epoch'" in capsys.readouterr().err
    assert main(["score", "--run", str(tmp_path / "norun"), "--input", str(tmp_path)]) == 2
    assert "config.yaml not found" in capsys.readouterr().err


def test_evaluate_writes_metrics_events_and_plots(scored_run, capsys):
    import json

    assert main(["evaluate", "--run", str(scored_run), "--set", "postprocess.sigma=1"]) == 0
    m = json.loads((scored_run / "metrics.json").read_text())
    for key in ("frame_auc_micro", "frame_auc_macro", "frame_ap", "eer", "sigma", "normalisation",
                "frame_auc_micro_raw", "per_clip"):
        assert key in m
    assert m["sigma"] == 1 and m["normalisation"] == "minmax"
    assert m["frame_auc_micro_raw"] > 0.8  # the pasted checkerboard is found
    assert set(m["per_clip"]) == {"01_0001", "01_0002"} and m["clips"] == 3  # + the unlabelled cam3
    header = (scored_run / "events.csv").read_text().splitlines()[0]
    assert header == "clip,start,end,peak,peak_frame,start_s,end_s"
    assert (scored_run / "plots" / "roc.png").stat().st_size > 5000
    assert (scored_run / "plots" / "timeline_01_0001.png").is_file()
    assert "frame AUC micro" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(scored_run), "--set", "postprocess.normalisation=zscore"]) == 2
    assert "unknown normalisation 'zscore'" in capsys.readouterr().err
