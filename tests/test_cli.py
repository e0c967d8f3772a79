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


def test_unknown_subcommand_and_help(capsys):
    with pytest.raises(SystemExit) as err:
        main(["frobnicate"])
    assert err.value.code == 2
    out = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "demo", "--help"],  # the script itself
                         capture_output=True, text=True, check=True).stdout
    assert "example" in out and "run_pipeline.py demo" in out
    for command in ("inspect", "train", "score", "evaluate", "render", "run"):  # in this process: torch is loaded
        with pytest.raises(SystemExit) as err:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert err.value.code == 0 and "example" in out and f"run_pipeline.py {command}" in out


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path, capsys):
    """The demo command end to end, shrunk with overrides (the real one trains for minutes)."""
    import json

    quick = ["train.epochs=1", "model.input_height=64", "train.batch_size=16"]
    assert main(["demo", "--out", str(tmp_path), "--set", *quick]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "data" / "scene.json").is_file()
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["labelled_clips"] == 4 and set(m["per_clip"]) == {f"01_{i:04d}" for i in range(1, 5)}
    assert f"frame AUC micro {m['frame_auc_micro']:.3f}" in out  # the printed figure is the one in metrics.json
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [f"01_{i:04d}.mp4" for i in range(1, 5)]
    assert "demo finished" in out and str(tmp_path / "videos") in out
    assert main(["demo", "--out", str(tmp_path), "--set", *quick]) == 0  # second run reuses data and model
    assert "reusing" in capsys.readouterr().out


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    from tests import helpers

    base = tmp_path_factory.mktemp("e2e")
    # 4 training clips: with 2, the AUC swung between 0.33 and 0.86 across training seeds (a coin toss, whatever
    # the preprocessing); with 4 it was 0.99-1.0 for seeds 0, 1 and 2.
    data = helpers.make_anomaly_scene(base / "data", n_train=4)
    run = base / "run"
    tiny = ["model.input_height=96", "train.epochs=6", "train.batch_size=8", "train.lr=3e-3"]
    assert main(["train", "--data", str(data), "--dataset", "shanghaitech", "--out", str(run), "--set", *tiny]) == 0
    assert main(["score", "--run", str(run), "--data", str(data), "--dataset", "shanghaitech",
                 "--set", "score.save_maps=true"]) == 0
    return run


def test_train_then_score_end_to_end(scored_run, capsys):
    import numpy as np

    from tests import helpers

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
    assert "run folder not found" in capsys.readouterr().err


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
    assert header == "id,clip,start,end,peak,peak_frame,start_s,end_s,branch"
    events = json.loads((scored_run / "events.json").read_text())
    assert events and all(e["id"] == f"{e['clip']}-f{e['start']}" for e in events)
    assert {e["branch"] for e in events} <= {"appearance", "motion"}
    assert m["event_rule"] == "offline" and "alarms_causal" in m  # what the live rule would have raised, too
    assert (scored_run / "plots" / "roc.png").stat().st_size > 5000
    assert (scored_run / "plots" / "timeline_01_0001.png").is_file()
    assert "frame AUC micro" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(scored_run), "--set", "eval.rule=causal", "postprocess.sigma=1"]) == 0
    causal = json.loads((scored_run / "metrics.json").read_text())
    assert causal["event_rule"] == "causal" and causal["alarms"] == m["alarms_causal"]
    assert causal["alarms_offline"] == m["alarms"]
    assert main(["evaluate", "--run", str(scored_run), "--set", "postprocess.normalisation=zscore"]) == 2
    assert "normalisation: got 'zscore'; expected one of minmax, calibrated, none" in capsys.readouterr().err


def _frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_render_command_writes_one_video_per_clip(scored_run, capsys):
    assert main(["render", "--run", str(scored_run), "--clip", "01_0001", "--set", "render.fps=8"]) == 0
    assert "rendered 1 video(s), 16 frames" in capsys.readouterr().out
    assert _frame_count(scored_run / "videos" / "01_0001.mp4") == 16
    assert main(["render", "--run", str(scored_run), "--clip", "nope"]) == 2
    assert "['nope'] not scored" in capsys.readouterr().err
    assert main(["render", "--run", str(scored_run), "--set", "render.opacity=2"]) == 2
    assert "render.opacity: got 2.0; expected a value >= 0 and <= 1" in capsys.readouterr().err


TINY_PIPELINE = """
data:
  dataset: shanghaitech
model:
  input_height: 64
train:
  epochs: 2
  batch_size: 16
score:
  save_maps: true
eval:
  fps: 10
"""


def test_run_pipeline_end_to_end(tmp_path, capsys):
    import json

    from tests import helpers

    data = helpers.make_anomaly_scene(tmp_path / "data", n_train=2)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_PIPELINE)
    run = tmp_path / "run"
    assert main(["run", "--config", str(config), "--data", str(data), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    m = json.loads((run / "metrics.json").read_text())
    assert {"frame_auc_micro", "frame_auc_macro"} <= set(m) and m["labelled_clips"] == 2
    assert (run / "events.csv").is_file() and (run / "plots" / "roc.png").is_file()
    for clip in ("01_0001", "01_0002"):
        assert _frame_count(run / "videos" / f"{clip}.mp4") == 16
    assert "pipeline done" in out and "videos:" in out
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())  # the resolved config, data included
    assert saved["data"] == {"dataset": "shanghaitech", "root": str(data), "scenes": None, "frame_labels": None}
    assert saved["train"]["epochs"] == 2 and saved["render"]["layout"] == "overlay"
    # Running again resumes: nothing retrained, nothing re-scored, outputs rewritten.
    scores = (run / "scores" / "01_0001.npy").stat().st_mtime_ns
    assert main(["run", "--config", str(config), "--data", str(data), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "already trained" in out and "scored" not in out and "pipeline done" in out
    assert (run / "scores" / "01_0001.npy").stat().st_mtime_ns == scores
    # Asking for something the saved scores lack (per-position standardised maps) re-scores.
    assert main(["score", "--run", str(run), "--set", "score.per_position=true"]) == 0
    assert "scored 32 frames of 2 clips" in capsys.readouterr().out
    # Bad settings and unknown clips stop before any training.
    assert main(["run", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "r2"),
                 "--clip", "01_0009"]) == 2
    assert "--clip ['01_0009']: not in the test split" in capsys.readouterr().err
    assert main(["run", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "r2"),
                 "--set", "render.preset=quick"]) == 2
    assert "render.preset: got 'quick'; expected one of ultrafast" in capsys.readouterr().err
    assert not (tmp_path / "r2" / "checkpoints").exists() and not (tmp_path / "r2" / "config.yaml").exists()


def test_run_errors(tmp_path, capsys):
    from tests import helpers

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_PIPELINE)
    args = ["run", "--config", str(config), "--out", str(tmp_path / "run")]
    assert main([*args, "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "missing") in err and "not found (is the dataset root right?)" in err
    assert main(args) == 2
    assert "no data root: pass --data ROOT" in capsys.readouterr().err
    assert main(["run", "--config", "nosuch", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "pipeline config not found: nosuch" in err and "campus" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_PIPELINE.replace("epochs: 2", "epoch: 2"))
    assert main(["run", "--config", str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "bad.yaml: unknown config key train.epoch" in capsys.readouterr().err
    # An unreadable training video: the error names the file.
    data = helpers.make_anomaly_scene(tmp_path / "data", n_train=2)
    (data / "training" / "videos" / "01_003.avi").write_bytes(b"not a video" * 50)
    assert main([*args, "--data", str(data)]) == 2
    assert "01_003.avi" in capsys.readouterr().err


def test_bundled_pipelines_load():
    from vad.config import load_config
    from vad.offline.pipeline import PIPELINES, find_pipeline

    names = sorted(p.stem for p in PIPELINES.glob("*.yaml"))
    assert names == ["avenue", "campus", "demo", "ped1", "ped2", "shanghaitech"]
    for name in names:
        cfg = load_config(find_pipeline(name))
        assert cfg.data.dataset in ("shanghaitech", "avenue", "ped2", "ped1") and cfg.score.save_maps
