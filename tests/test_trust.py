"""What operators do to a run folder beyond the happy path: re-scoring from new footage, scoring settings on a
trained model, odd footage (rotated, greyscale, partly recorded, changing size), broken files. Each case gets the
right result or one ``error:`` line with exit code 2; nothing stale is shown and nothing computed is lost."""

from __future__ import annotations

import ast
import os
import pickle
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests import helpers
from vad.cli import main
from vad.io.decode import iter_frames
from vad.io.probe import probe
from vad.runs import RunFolder, read_manifest

TINY = ["model.input_height=32", "train.epochs=2", "train.batch_size=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny STPM with its motion branch (the default model), trained on a folder of two colour videos."""
    base = tmp_path_factory.mktemp("trust")
    footage = base / "footage"
    for i in range(2):
        helpers.write_video(footage / f"cam{i}.avi", helpers.frames(i))
    run = base / "run"
    assert main(["train", "--data", str(footage), "--dataset", "folder", "--out", str(run), "--set", *TINY]) == 0
    return run


def _run_copy(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run folder (model and config only) for a test that scores into it."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    for name in ("model.pt", "config.yaml"):
        (run / name).write_bytes((trained / name).read_bytes())
    return run


def test_rescoring_from_new_footage_removes_what_the_old_scores_made(trained: Path, tmp_path: Path, capsys) -> None:
    run = _run_copy(trained, tmp_path)
    folder = RunFolder(run)
    video = helpers.write_video(tmp_path / "cam" / "day.avi", helpers.frames(3))
    assert main(["score", "--run", str(run), "--input", str(video)]) == 0
    assert main(["evaluate", "--run", str(run)]) == 0
    assert main(["render", "--run", str(run)]) == 0
    made = [folder.video("day"), folder.timeline("day"), folder.metrics, folder.events_csv, folder.events_json]
    assert all(p.is_file() for p in made)
    helpers.write_video(video, helpers.paste_anomaly(helpers.frames(7), 2, 12))  # new footage in the same file
    capsys.readouterr()
    # Before scoring again, the stale scores are refused, by evaluate and render alike, and what was made from them
    # (a video of the old footage) is gone.
    for command in ("render", "evaluate"):
        assert main([command, "--run", str(run)]) == 2
        assert "changed since they were scored" in capsys.readouterr().err
        assert not any(p.exists() for p in made)
    assert main(["score", "--run", str(run), "--input", str(video)]) == 0
    assert main(["evaluate", "--run", str(run)]) == 0 and main(["render", "--run", str(run)]) == 0
    assert all(p.is_file() for p in made)
    capsys.readouterr()
    assert main(["score", "--run", str(run), "--input", str(video), "--overwrite"]) == 0  # scores change again
    out = capsys.readouterr().out
    assert re.search(r"removed \d+ output\(s\) made from earlier scores \(metrics.json, events.csv", out)
    assert not any(p.exists() for p in made)  # nothing derived from the old scores survives


def test_scoring_settings_apply_at_scoring_time_and_rescore(trained: Path, tmp_path: Path, capsys) -> None:
    run = _run_copy(trained, tmp_path)
    folder = RunFolder(run)
    video = helpers.write_video(tmp_path / "in" / "day.avi", helpers.paste_anomaly(helpers.frames(3), 4, 12))
    assert main(["score", "--run", str(run), "--input", str(video)]) == 0
    fused_max = np.load(folder.scores("day"))
    capsys.readouterr()
    assert main(["score", "--run", str(run), "--input", str(video), "--set", "model.fusion=sum"]) == 0
    out = capsys.readouterr().out
    assert "fitting the normal reference for model.fusion=sum" in out and "scored 16 frames" in out
    fused_sum = np.load(folder.scores("day"))
    assert not np.allclose(fused_sum, fused_max)  # the setting changed the scores
    record = read_manifest(folder)["day"]
    assert record.scored_with["scoring"]["fusion"] == "sum"
    # The reference it was scored against is the sum's: its hold-out scores differ from the trained (max) one's.
    assert main(["evaluate", "--run", str(run)]) == 0
    assert main(["score", "--run", str(run), "--input", str(video), "--set", "model.fusion=sum"]) == 0
    assert "scored" not in capsys.readouterr().out  # same settings: kept
    assert main(["score", "--run", str(run), "--input", str(video)]) == 0  # back to the trained max: re-scored
    assert np.allclose(np.load(folder.scores("day")), fused_max, atol=1e-6)
    assert main(["score", "--run", str(run), "--input", str(video), "--set", "model.motion_pool=1"]) == 0
    assert not np.allclose(np.load(folder.scores("day")), fused_max)


@pytest.mark.parametrize(("command", "setting", "says"), [
    ("score", "model.backbone=resnet18", "model.backbone is fixed by the trained model; train a new run"),
    ("score", "model.input_height=32", "model.input_height is fixed by the trained model"),
    ("score", "train.epochs=5", "train.epochs is fixed by the trained model"),
    ("score", "postprocess.sigma=7", "postprocess.sigma applies to evaluate and render, not to score"),
    ("evaluate", "train.epochs=5", "train.epochs is fixed by the trained model"),
    ("evaluate", "model.backbone=resnet18", "model.backbone is fixed by the trained model"),
    ("evaluate", "model.fusion=sum", "model.fusion applies when scoring (vad score --run"),
    ("evaluate", "score.batch_size=4", "score.batch_size applies to score, not to evaluate"),
    ("render", "model.motion_pool=1", "model.motion_pool applies when scoring"),
])
def test_settings_a_command_cannot_apply_are_refused_by_name(trained: Path, tmp_path: Path, capsys, command,
                                                             setting, says) -> None:
    video = helpers.write_video(tmp_path / "clip.avi", helpers.frames(2))
    extra = ["--input", str(video)] if command == "score" else []
    assert main([command, "--run", str(trained), *extra, "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1


def test_training_again_with_other_scoring_settings_resumes(trained: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    footage = Path(RunFolder(trained).root).parent / "footage"
    base = ["train", "--data", str(footage), "--dataset", "folder", "--out", str(run), "--set", *TINY]
    assert main(base) == 0
    digest = (run / "model.pt").read_bytes()
    assert main([*base, "model.fusion=sum", "model.motion_pool=5", "model.combine=sum"]) == 0
    assert "already trained" in capsys.readouterr().out
    assert (run / "model.pt").read_bytes() == digest


@pytest.mark.parametrize(("setting", "says"), [
    ("postprocess.sigma=.inf", "postprocess.sigma: got inf; expected a finite number >= 0 and <= 1000"),
    ("postprocess.sigma=1e9", "postprocess.sigma: got 1000000000.0; expected a value >= 0 and <= 1000"),
    ("postprocess.sigma=.nan", "postprocess.sigma: got nan; expected a finite number"),
    ("eval.fps=.inf", "eval.fps: got inf; expected a finite number > 0"),
    ("render.heat_range=.inf", "render.heat_range: got inf"),
])
def test_infinite_and_huge_numbers_are_setting_errors(trained: Path, capsys, setting, says) -> None:
    command = "render" if setting.startswith("render") else "evaluate"
    assert main([command, "--run", str(trained), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1


def test_a_symlink_loop_input_is_one_error_line(trained: Path, tmp_path: Path, capsys) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert main(["score", "--run", str(trained), "--input", str(loop)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {loop}: cannot be read") and err.count("\n") == 1


@pytest.mark.parametrize("content", ["[1, 2, 3]", "null", "{garbage"])
def test_a_broken_manifest_is_an_error_and_overwrite_replaces_it(trained: Path, tmp_path: Path, capsys,
                                                                   content) -> None:
    run = _run_copy(trained, tmp_path)
    video = helpers.write_video(tmp_path / "clip.avi", helpers.frames(2))
    RunFolder(run).manifest.write_text(content)
    assert main(["score", "--run", str(run), "--input", str(video)]) == 2
    err = capsys.readouterr().err
    assert "clips.json: not a manifest of this vad version" in err and "--overwrite" in err
    assert main(["evaluate", "--run", str(run)]) == 2
    assert "not a manifest" in capsys.readouterr().err
    assert main(["score", "--run", str(run), "--input", str(video), "--overwrite"]) == 0  # the advice works
    assert list(read_manifest(RunFolder(run))) == ["clip"]


def _ts(path: Path, size: tuple[int, int], n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w", format="mpegts") as c:
        s = c.add_stream("mpeg2video", rate=10)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(n):
            c.mux(s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8),
                                                      format="rgb24")))
        c.mux(s.encode())
    return path.read_bytes()


def test_a_video_that_changes_size_mid_stream_is_resized_and_said_so(trained: Path, tmp_path: Path, capsys) -> None:
    both = tmp_path / "in" / "resized.ts"
    both.parent.mkdir()
    both.write_bytes(_ts(tmp_path / "a.ts", (64, 48), 8, 0) + _ts(tmp_path / "b.ts", (96, 64), 8, 1))
    shapes = {tuple(f.shape[1:]) for _, f in iter_frames(both, batch_size=4, partial=True)}
    assert shapes == {(3, 48, 64)}
    run = _run_copy(trained, tmp_path)
    assert main(["score", "--run", str(run), "--input", str(both)]) == 0
    err = capsys.readouterr().err
    assert f"{both}: frame " in err and " is 96x64 while the video began at 64x48" in err
    assert len(np.load(RunFolder(run).scores("resized"))) >= 15


def test_a_partly_recorded_video_is_scored_as_far_as_it_decodes(trained: Path, tmp_path: Path, capsys) -> None:
    full = helpers.write_video(tmp_path / "full.avi", helpers.frames(3, 32))
    part = tmp_path / "in" / "part.avi"
    part.parent.mkdir()
    part.write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # the recorder stopped half way
    declared = probe(part).num_frames
    decoded = sum(len(f) for _, f in iter_frames(part, partial=True))
    assert declared == 32 and 0 < decoded < declared
    run = _run_copy(trained, tmp_path)
    assert main(["score", "--run", str(run), "--input", str(part)]) == 0
    err = capsys.readouterr().err
    assert (f"{part}: the container declares 32 frames but {decoded} decode (a partly recorded file?); scored those "
            f"{decoded}, {32 - decoded} missing") in err
    assert len(np.load(RunFolder(run).scores("part"))) == decoded
    assert read_manifest(RunFolder(run))["part"].frames == decoded
    assert main(["evaluate", "--run", str(run)]) == 0
    assert main(["render", "--run", str(run)]) == 0  # renders the frames that were scored


def test_a_corrupt_or_malicious_model_is_one_error_line(trained: Path, tmp_path: Path, capsys) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    video = helpers.write_video(tmp_path / "clip.avi", helpers.frames(2))
    for i, content in enumerate((pickle.dumps(Payload()), b"\x00" * 100, None)):
        run = _run_copy(trained, tmp_path / f"r{i}")
        model = RunFolder(run).model
        if content is None:
            torch.save({"x": Payload()}, model)  # a real torch file carrying code
        else:
            model.write_bytes(content)
        assert main(["score", "--run", str(run), "--input", str(video)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {model}: not a readable checkpoint") and err.count("\n") == 1
        assert "weights_only" not in err
    assert not (tmp_path / "owned").exists()


def test_evaluate_on_a_footage_folder_leaves_nothing_there(tmp_path: Path, capsys) -> None:
    footage = tmp_path / "footage"
    helpers.write_video(footage / "cam.avi", helpers.frames(0))
    before = sorted(p.name for p in footage.iterdir())
    for command in ("evaluate", "render", "score"):
        assert main([command, "--run", str(footage)]) == 2
        assert "is not a run folder" in capsys.readouterr().err
    assert sorted(p.name for p in footage.iterdir()) == before  # no .lock


def _rotated(path: Path, degrees: int) -> Path:
    """An MP4 whose frames are stored sideways with a display rotation, as phones record: a white square at the
    stored frame's top left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.set_display_rotation(degrees)
        for t in range(16):
            a = helpers.frames(0, 16)[t].copy()
            a[:12, :12] = 255
            c.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        c.mux(s.encode())
    return path


def test_rotated_phone_footage_is_scored_and_rendered_upright(trained: Path, tmp_path: Path) -> None:
    video = _rotated(tmp_path / "in" / "phone.mp4", 90)
    info = probe(video)
    assert (info.width, info.height, info.rotation) == (48, 64, 90)
    _, frames = next(iter(iter_frames(video, batch_size=16)))
    assert frames.shape[-2:] == (64, 48)  # upright: the stored 64x48 turned
    white = frames[0, 0] > 240
    assert white[-12:, :12].all() and not white[:12, :12].all()  # the square turned with it (as ffmpeg shows it)
    run = _run_copy(trained, tmp_path)
    assert main(["score", "--run", str(run), "--input", str(video)]) == 0
    assert main(["render", "--run", str(run)]) == 0
    with av.open(str(RunFolder(run).video("phone"))) as c:
        s = c.streams.video[0]
        assert (s.height - 72, s.width) == (64, 48)  # the picture above the score strip is upright


def test_greyscale_footage_on_a_colour_model_is_noted(trained: Path, tmp_path: Path, capsys) -> None:
    grey = helpers.frames(3).mean(-1, keepdims=True).repeat(3, -1).astype(np.uint8)
    video = helpers.write_video(tmp_path / "in" / "night.avi", grey)
    colour = helpers.write_video(tmp_path / "in" / "day.avi", helpers.frames(3))
    run = _run_copy(trained, tmp_path)
    assert main(["score", "--run", str(run), "--input", str(video.parent)]) == 0
    out = capsys.readouterr().out
    assert "note: clip night is greyscale footage and the model was trained on colour" in out
    assert "clip day is" not in out and colour.exists()


def test_a_bug_keeps_its_traceback_and_debug_shows_any(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import vad.offline.evaluate

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(vad.offline.evaluate, "evaluate_run", broken)
    with pytest.raises(ValueError, match="an internal bug"):  # not swallowed into an "error:" line
        main(["evaluate", "--run", str(trained)])
    monkeypatch.undo()
    with pytest.raises(Exception, match="not a run folder"):
        main(["evaluate", "--run", str(tmp_path), "--debug"])


def test_no_import_cycles_in_vad() -> None:
    """Every ``from vad... import`` edge (module level or inside a function) forms no cycle."""
    root = Path(__file__).resolve().parents[1] / "vad"
    graph = {}
    for p in root.rglob("*.py"):
        name = ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("vad"):
                deps |= {n.module, *(f"{n.module}.{a.name}" for a in n.names)}
        graph[name] = deps
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    done, cycle = set(), []

    def visit(m: str, stack: list[str]) -> None:
        for d in graph[m]:
            if d in stack:
                cycle.append(stack[stack.index(d):] + [d])
            elif d not in done:
                visit(d, [*stack, d])
        done.add(m)

    for m in sorted(graph):
        visit(m, [m])
    assert not cycle, " -> ".join(cycle[0])


def test_only_the_run_folder_module_names_run_files() -> None:
    """No module but vad/runs.py builds a path to a run folder's files (dataset layouts, in vad/io and the demo
    scene's generator, and torch's weight cache, in vad/models, have names of their own)."""
    root = Path(__file__).resolve().parents[1] / "vad"
    skip = {"runs.py", "synthetic.py"}
    names = ["model.pt", "config.yaml", "clips.json", "metrics.json", "events.csv", "events.json", "checkpoints",
             "scores", "maps", "videos", "normal_scores", "train_log.jsonl", "last.pt", "best.pt", "review.html",
             "feedback.jsonl", "events.jsonl", "snapshots", "scenes", "plots", "labels"]
    paths = [f'/ "{n}' for n in names] + [f"/ f'{n}" for n in names] + [f'/ f"{n}' for n in names]
    found = [f"{p.name}: {n}" for p in root.rglob("*.py")
             if p.name not in skip and p.parent.name not in ("io", "models") for n in paths if n in p.read_text()]
    assert not found, found


def _calls(name: str) -> list[str]:
    """``file:line`` of every call of the bare name ``name`` in vad/."""
    root = Path(__file__).resolve().parents[1] / "vad"
    return [f"{p.relative_to(root)}:{n.lineno}" for p in sorted(root.rglob("*.py"))
            for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def test_only_the_cli_prints() -> None:
    """The library logs (logging.getLogger(__name__)); the CLI alone prints, so that a program embedding vad can
    quiet or route what it says."""
    assert [c for c in _calls("print") if not c.startswith("cli/")] == []


def test_a_model_is_opened_for_scoring_in_one_place() -> None:
    """Checkpoint -> Scorer -> normal reference -> backend: vad/runtime/open.py (prepare.py writes), called by the
    stages, the Python API and the site; training builds its own scorer for the hold-out pass."""
    assert [c.split(":")[0] for c in _calls("load_model")] == ["runtime/open.py"]
    assert sorted({c.split(":")[0] for c in _calls("Scorer")}) == ["offline/train.py", "runtime/open.py"]
    # the writing reference (prepare.py calls it, or hands it to open.start): named nowhere else
    root = Path(__file__).resolve().parents[1] / "vad"
    named = {str(p.relative_to(root)) for p in root.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.Name) and n.id == "normal_reference"}
    assert named == {"runtime/prepare.py"}
