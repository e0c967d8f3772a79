"""The overlay renderer on a hand-made scored run: known frames, known maps, known scores."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from tests import helpers
from vad.config import EvalConfig, PostprocessConfig, RenderConfig
from vad.errors import InputError
from vad.io.records import frames_clip
from vad.offline.render import RenderError, StripPainter, render_run
from vad.runs import ClipRecord, RunFolder, read_manifest, source_fingerprint, write_manifest
from vad.runtime.reference import heat_scale

H, W, N = 64, 96, 20
HOT = slice(8, 16), slice(4, 8)  # map cells (stride 4) that are hot in frames 10..14 -> pixels 32:64, 16:32
EVENT = range(10, 15)


def _decode(path: Path) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        return frames, (stream.codec_context.name, float(stream.average_rate), stream.width, stream.height)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A scored run over one grey JPEG-folder clip: map hot in a block and scores above threshold in EVENT."""
    grey = np.full((N, H, W, 3), 128, np.uint8)
    clip = helpers.write_frames(tmp_path / "frames" / "cam1", grey)
    run = tmp_path / "run"
    maps = np.full((N, H // 4, W // 4), 0.1, np.float16)
    scores = np.full(N, 0.1, np.float32)
    for t in EVENT:
        maps[t][HOT] = 2.0
        scores[t] = 2.0
    for sub, arr in {"scores": scores, "maps": maps, "labels": np.isin(np.arange(N), EVENT).astype(np.uint8),
                     "normal_scores": np.linspace(0.05, 0.3, 50).astype(np.float32)}.items():
        (run / sub).mkdir(parents=True)
        np.save(run / sub / ("all.npy" if sub == "normal_scores" else "cam1.npy"), arr)
    write_manifest({"cam1": ClipRecord.of(frames_clip(clip, name="cam1"), "all", {})}, RunFolder(run).manifest)
    return run


POST, EV = PostprocessConfig(sigma=0), EvalConfig(fps=12, min_event_frames=2)


def test_render_writes_h264_with_heatmap_strip_and_marker(run):
    (path,) = render_run(run, POST, EV, RenderConfig(strip_height=40), progress=False)
    assert path == run / "videos" / "cam1.mp4"
    frames, (codec, fps, width, height) = _decode(path)
    assert codec == "h264" and fps == 12 and (width, height) == (W, H + 40)
    assert len(frames) == N  # one output frame per source frame
    hot, calm = frames[12], frames[3]
    region = hot[32:64, 16:32].astype(int)
    # The hot block is coloured (jet's top end is red), the rest of the picture keeps the grey frame.
    assert region[..., 0].mean() > region[..., 2].mean() + 40
    assert np.abs(calm[10:54, 10:86].astype(int) - 128).mean() < 6
    assert np.abs(hot[36:58, 50:86].astype(int) - 128).mean() < 6
    # Frames of the event (10..14, as in events.csv) get a red border; others don't.
    red = lambda f: f[:2, 40:, 0].mean() > 180 and f[:2, 40:, 1].mean() < 90  # noqa: E731
    assert [t for t in range(N) if red(frames[t])] == list(EVENT)
    # The strip sits below the picture and is not the grey frame.
    assert np.abs(calm[H + 5 :, :].astype(int) - 128).mean() > 40


def test_side_by_side_doubles_the_width(run):
    (path,) = render_run(run, POST, EV, RenderConfig(layout="side_by_side", strip_height=32), progress=False)
    frames, (_, _, width, height) = _decode(path)
    assert (width, height) == (2 * W, H + 32) and len(frames) == N
    right = frames[12][:H, W:].astype(int)
    assert right[32:64, 16:32, 0].mean() > right[5:20, 50:80, 0].mean() + 60  # heat panel shows the block


def test_render_errors_name_the_problem(run, tmp_path):
    with pytest.raises(ValueError, match=r"clip\(s\) \['nope'\] not scored.*cam1"):
        render_run(run, POST, EV, RenderConfig(), clips=["nope"], progress=False)
    # The source lost frames since scoring: an error naming it, before any video is started.
    frames = sorted((tmp_path / "frames" / "cam1").iterdir())
    for f in frames[-3:]:
        f.unlink()
    with pytest.raises(InputError, match="source of clip.s. cam1 changed since they were scored .*stale: score again"):
        render_run(run, POST, EV, RenderConfig(), progress=False)
    assert not (run / "videos" / "cam1.mp4").exists()
    # A manifest whose frame count disagrees with the source's frames: stopped, no partial video left behind.
    record = read_manifest(RunFolder(run))["cam1"]
    write_manifest({"cam1": replace(record, source=source_fingerprint(frames_clip(Path(record.path), name="cam1")))},
                   RunFolder(run).manifest)
    with pytest.raises(RenderError, match="cam1.*decoded 17 frames.*scored with 20"):
        render_run(run, POST, EV, RenderConfig(), progress=False)
    assert not (run / "videos" / "cam1.mp4").exists() and not list((run / "videos").glob(".*"))
    # Without maps: scores only (overlay), or a clear error (side by side).
    (run / "maps" / "cam1.npy").unlink()
    record = read_manifest(RunFolder(run))["cam1"]
    write_manifest({"cam1": replace(record, frames=17)}, RunFolder(run).manifest)
    for sub in ("scores", "labels"):
        np.save(run / sub / "cam1.npy", np.load(run / sub / "cam1.npy")[:17])
    with pytest.raises(RenderError, match="side_by_side needs the anomaly maps"):
        render_run(run, POST, EV, RenderConfig(layout="side_by_side"), progress=False)
    (path,) = render_run(run, POST, EV, RenderConfig(), progress=False)
    assert len(_decode(path)[0]) == 17


def test_heat_scale_puts_threshold_at_the_given_fraction():
    low, high = heat_scale(np.array([1.0, 2.0, 3.0]), threshold=4.0, heat_range=2.0)
    assert (low, high) == (2.0, 6.0) and (4.0 - low) / (high - low) == 0.5


def test_strip_cursor_moves_and_reveals_the_curve():
    scores = np.r_[np.zeros(10), np.ones(10)]
    painter = StripPainter(scores, 0.5, np.r_[np.zeros(10), np.ones(10)].astype(np.uint8), [], 200, 40)
    early, late = painter.strip(2, "a").astype(int), painter.strip(19, "b").astype(int)
    assert early.shape == (40, 200, 3)
    cursor = lambda s: int(np.flatnonzero((s[20:] == 255).all(axis=(0, 2)))[0])  # noqa: E731
    assert cursor(early) < cursor(late)
    # The curve is drawn bright (the past) up to the cursor and dim after it: the late strip shows the second half's
    # high scores bright, the early one dim.
    bright = lambda s: (np.abs(s - np.array([120, 220, 255])).sum(-1) < 40)[10:39]  # noqa: E731
    x_high = slice(150, 190)  # columns of frames 15..18, where the score is 1
    assert bright(late)[:, x_high].sum() >= 40 and bright(early)[:, x_high].sum() == 0
    assert bright(early)[:, : cursor(early)].sum() > 0
