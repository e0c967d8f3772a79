"""The run folder under misuse: changed sources, two commands at once, leftovers, unwritable places, a diverging
training, broken scores. Each gets the right result or a one-line ``error:`` with exit code 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests import helpers
from vad.cli import main
from vad.runs import RunFolder, locked, path_tag, read_manifest

TINY = ["model.input_height=32", "train.epochs=2", "train.batch_size=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny STPM trained on unlabelled footage (a folder of two videos)."""
    base = tmp_path_factory.mktemp("runs")
    footage = base / "footage"
    for i in range(2):
        helpers.write_video(footage / f"cam{i}.avi", helpers.frames(i))
    run = base / "run"
    assert main(["train", "--data", str(footage), "--dataset", "folder", "--out", str(run), "--set", *TINY]) == 0
    return run


def test_two_cameras_day_mp4_keep_their_own_scores(trained: Path, tmp_path: Path, capsys) -> None:
    """cam1/day.avi then cam2/day.avi into one run: both kept, the second named by its path, and said so; scoring
    either again keeps its name and its scores; a file rewritten in place is scored again under its name."""
    day1 = helpers.write_video(tmp_path / "cam1" / "day.avi", helpers.frames(3))
    day2 = helpers.write_video(tmp_path / "cam2" / "day.avi", helpers.paste_anomaly(helpers.frames(4), 4, 12))
    run = RunFolder(trained)
    assert main(["score", "--run", str(trained), "--input", str(day1)]) == 0
    first = np.load(run.scores("day"))
    capsys.readouterr()
    assert main(["score", "--run", str(trained), "--input", str(day2)]) == 0
    out = capsys.readouterr().out
    second = f"day-{path_tag(day2)}"
    assert f"clip {second}: {day2.resolve()} (the name day is taken by {day1.resolve()})" in out
    assert "scored 16 frames" in out
    records = read_manifest(run)
    assert records["day"].path == str(day1.resolve()) and records[second].path == str(day2.resolve())
    assert np.array_equal(np.load(run.scores("day")), first)  # cam1's scores untouched
    assert not np.allclose(np.load(run.scores(second)), first)
    for day in (day1, day2):  # unchanged sources: kept under their names, nothing scored
        assert main(["score", "--run", str(trained), "--input", str(day)]) == 0
        assert "scored" not in capsys.readouterr().out
    helpers.write_video(day2, helpers.frames(5))  # the same file rewritten in place
    assert main(["score", "--run", str(trained), "--input", str(day2)]) == 0
    assert f"clip {second}: its source {day2.resolve()} was modified since it was scored" in capsys.readouterr().out
    assert set(read_manifest(run)) >= {"day", second}


def test_a_second_command_on_a_busy_run_folder_stops(trained: Path, tmp_path: Path, capsys) -> None:
    video = helpers.write_video(tmp_path / "cam9.avi", helpers.frames(9))
    with locked(trained, "score"):
        assert main(["score", "--run", str(trained), "--input", str(video)]) == 2
        err = capsys.readouterr().err
        assert f"{trained} is in use by another vad command ('score', pid {os.getpid()}" in err
        assert main(["evaluate", "--run", str(trained)]) == 2
    assert "cam9" not in read_manifest(RunFolder(trained))
    assert main(["score", "--run", str(trained), "--input", str(video)]) == 0  # free again
    assert "cam9" in read_manifest(RunFolder(trained))


def test_scoring_runs_one_after_another_keep_every_clip(trained: Path, tmp_path: Path) -> None:
    names = []
    for i in range(3):
        folder = tmp_path / f"batch{i}"
        for j in range(2):
            helpers.write_video(folder / f"b{i}_{j}.avi", helpers.frames(10 * i + j))
            names.append(f"b{i}_{j}")
        assert main(["score", "--run", str(trained), "--input", str(folder)]) == 0
    assert set(names) <= set(read_manifest(RunFolder(trained)))


def test_stale_temporary_files_are_swept(trained: Path, tmp_path: Path) -> None:
    video = helpers.write_video(tmp_path / "cam7.avi", helpers.frames(7))
    assert main(["score", "--run", str(trained), "--input", str(video)]) == 0
    stale = [trained / "videos" / ".vad-tmp.cam7.x1y2z3.mp4", trained / "plots" / ".vad-tmp.timeline_cam7.ab12.png",
             trained / "scores" / ".vad-tmp.cam7.q9w8.npy"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    assert main(["evaluate", "--run", str(trained)]) == 0
    assert not any(p.exists() for p in stale)


def test_score_without_input_on_unlabelled_footage_asks_what_to_score(trained: Path, capsys) -> None:
    assert main(["score", "--run", str(trained)]) == 2
    assert "say what to score: --input VIDEO_OR_FOLDER" in capsys.readouterr().err


def test_frame_folder_events_say_they_have_no_times(trained: Path, tmp_path: Path, capsys) -> None:
    frames = helpers.paste_anomaly(helpers.frames(8), 2, 14)
    folder = helpers.write_frames(tmp_path / "jpegs" / "cam8", frames)
    assert main(["score", "--run", str(trained), "--input", str(folder)]) == 0
    assert main(["evaluate", "--run", str(trained), "--set", "eval.threshold_percentile=1"]) == 0
    assert "give their frame rate with --set eval.fps=FPS" in capsys.readouterr().out


def test_bad_output_places_are_errors_not_tracebacks(trained: Path, tmp_path: Path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["train", "--data", str(tmp_path), "--dataset", "folder", "--out", str(afile)]) == 2
    assert f"{afile} is a file; expected a run folder" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path / "nothing")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    video = helpers.write_video(tmp_path / "cam5.avi", helpers.frames(5))
    assert main(["score", "--run", str(trained), "--input", str(video)]) == 0
    capsys.readouterr()
    metrics = RunFolder(trained).metrics
    metrics.unlink(missing_ok=True)
    metrics.mkdir()
    try:
        assert main(["evaluate", "--run", str(trained)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {metrics}: Is a directory\n"
    finally:
        metrics.rmdir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_folder(trained: Path, capsys) -> None:
    trained.chmod(0o555)
    try:
        assert main(["evaluate", "--run", str(trained)]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        trained.chmod(0o755)


def test_nan_scores_are_an_error_not_zero_events(trained: Path, tmp_path: Path, capsys) -> None:
    video = helpers.write_video(tmp_path / "cam6.avi", helpers.frames(6))
    assert main(["score", "--run", str(trained), "--input", str(video)]) == 0
    path = RunFolder(trained).scores("cam6")
    good = np.load(path)
    bad = good.copy()
    bad[5] = np.nan
    np.save(path, bad)
    try:
        assert main(["evaluate", "--run", str(trained)]) == 2
        assert "cam6.npy: 1 of 16 scores are NaN or infinite (first at frame 5)" in capsys.readouterr().err
    finally:
        np.save(path, good)


def test_a_diverging_training_stops_at_the_first_bad_step(tmp_path: Path, capsys) -> None:
    footage = tmp_path / "footage"
    helpers.write_video(footage / "cam0.avi", helpers.frames(0))
    run = tmp_path / "run"
    argv = ["train", "--data", str(footage), "--dataset", "folder", "--out", str(run),
            "--set", *TINY, "train.lr=1e30", "train.schedule=constant"]
    for _ in range(2):  # the re-run meets the same clear error (not a missing checkpoint, not epoch 2/1)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "training diverged: the student loss became NaN or infinite at epoch" in err
        assert "Lower train.lr (e.g. --set train.lr=1e+29)" in err
        assert not (run / "model.pt").exists()
    log = run / "train_log.jsonl"
    assert not log.exists() or all(np.isfinite(json.loads(ln)["train_loss"]) for ln in log.read_text().splitlines())
