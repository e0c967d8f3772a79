from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import T, frames, write_frames, write_video
from vad.errors import DecodeError
from vad.io import iter_frames, probe
from vad.io.decode import as_clip


def collect(source, **kw) -> tuple[list[int], torch.Tensor]:
    firsts, batches = [], []
    for first, x in iter_frames(source, **kw):
        firsts.append(first)
        batches.append(x)
    return firsts, torch.cat(batches)


def test_pyav_batches_shapes_and_count(video_path):
    firsts, x = collect(video_path, batch_size=5)
    assert firsts == [0, 5, 10, 15]
    assert x.shape == (T, 3, 48, 64) and x.dtype == torch.uint8
    assert probe(video_path).num_frames == T  # the container's count matches the decoded count


def test_decoded_frames_match_source(video_path):
    _, x = collect(video_path)
    src = torch.from_numpy(frames(0)).permute(0, 3, 1, 2).float()
    assert (x.float() - src).abs().mean() < 6  # lossy codec, same picture


def test_decord_matches_pyav(video_path):
    pytest.importorskip("decord")
    _, a = collect(video_path, backend="pyav")
    _, b = collect(video_path, backend="decord", batch_size=7)
    assert a.shape == b.shape
    assert (a.float() - b.float()).abs().mean() < 2


def test_start_stop(video_path, tmp_path):
    firsts, x = collect(video_path, batch_size=4, start=3, stop=10)
    _, full = collect(video_path)
    assert firsts == [3, 7] and len(x) == 7
    assert torch.equal(x, full[3:10])
    folder = write_frames(tmp_path / "f", frames(1))
    firsts, y = collect(folder, start=2, stop=5)
    assert firsts == [2] and len(y) == 3
    pytest.importorskip("decord")
    _, z = collect(video_path, backend="decord", start=3, stop=10)
    assert (z.float() - full[3:10].float()).abs().mean() < 2


def test_frame_folder_pil_and_torchvision_agree(tmp_path):
    folder = write_frames(tmp_path / "clip", frames(3))
    _, a = collect(folder, backend="pil", batch_size=6)
    _, b = collect(folder, backend="torchvision", batch_size=6)
    assert a.shape == (T, 3, 48, 64)
    assert (a.float() - b.float()).abs().max() <= 2  # both libjpeg; rounding may differ
    # both keep the decoder's (H, W, 3) rows: channels-last, so that resizing needs no transposing copy
    assert a.is_contiguous(memory_format=torch.channels_last) and b.is_contiguous(memory_format=torch.channels_last)


def test_natural_frame_order(tmp_path):
    data = frames(4, n=12)
    folder = tmp_path / "clip"
    write_frames(folder, data, width=1)  # 0.jpg .. 11.jpg: lexicographic order would put 10 before 2
    _, x = collect(folder, backend="pil")
    src = torch.from_numpy(data).permute(0, 3, 1, 2).float()
    assert ((x.float() - src).abs().mean(dim=(1, 2, 3)) < 6).all()


def test_grayscale_tif_frames_become_rgb(tmp_path):
    from PIL import Image

    folder = tmp_path / "g"
    folder.mkdir()
    for t in range(3):
        Image.fromarray(np.full((10, 12), 40 * t, np.uint8)).save(folder / f"{t:03d}.tif")
    _, x = collect(folder)
    assert x.shape == (3, 3, 10, 12) and int(x[2, 1, 0, 0]) == 80


def test_16bit_png_frames_scale_to_8bit(tmp_path):
    """Pillow's own RGB conversion clips 16-bit samples to 255: a white frame that still 'decodes'."""
    from PIL import Image

    ramp = (np.arange(10 * 12, dtype=np.uint32).reshape(10, 12) * 550).astype(np.uint16)  # 0 .. 65450
    folder = tmp_path / "deep"
    folder.mkdir()
    for t in range(2):
        Image.fromarray(ramp).save(folder / f"{t:03d}.png")
    assert Image.open(folder / "000.png").mode == "I;16"  # really a 16-bit file
    _, x = collect(folder)
    expected = np.round(ramp / 257.0).astype(np.uint8)
    assert x.shape == (2, 3, 10, 12)
    for c in range(3):
        np.testing.assert_array_equal(x[0, c].numpy(), expected)
    assert 120 < x.float().mean() < 135  # a mid-grey ramp, not white (254.5)


def test_float_images_are_refused_by_name(tmp_path):
    from PIL import Image

    folder = tmp_path / "f"
    folder.mkdir()
    Image.fromarray(np.full((6, 8), 0.5, np.float32)).save(folder / "000.tif")
    with pytest.raises(DecodeError, match=r"000\.tif: image mode 'F' has no 8-bit reading"):
        collect(folder)


def test_truncated_video_is_an_error(tmp_path):
    long = write_video(tmp_path / "long.avi", frames(0, n=120))
    data = long.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match=r"cut\.avi: truncated video: .* declares 120 frames"):
        collect(cut)
    pytest.importorskip("decord")
    with pytest.raises(DecodeError, match=r"cut\.avi: truncated"):
        collect(cut, backend="decord")


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_bad_files_are_named(tmp_path, backend):
    if backend == "decord":
        pytest.importorskip("decord")
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError, match=r"empty\.avi: file is empty"):
        collect(empty, backend=backend)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 50)
    with pytest.raises(DecodeError, match=r"junk\.mp4: cannot be opened as a video"):
        collect(junk, backend=backend)
    with pytest.raises(DecodeError, match=r"gone\.avi: video file not found"):
        collect(as_clip_video(tmp_path / "gone.avi"), backend=backend)


def as_clip_video(path):
    from vad.io.records import Clip

    return Clip(name=path.stem, path=path, kind="video")


def test_non_video_and_bad_images(tmp_path):
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    with pytest.raises(DecodeError, match=r"readme\.txt: not a video file"):
        as_clip(text)
    with pytest.raises(DecodeError, match="no such file"):
        as_clip(tmp_path / "missing.mp4")
    folder = write_frames(tmp_path / "f", frames(0, n=3))
    (folder / "001.jpg").write_bytes(b"corrupt")
    with pytest.raises(DecodeError, match=r"001\.jpg: cannot decode image"):
        collect(folder, backend="pil")
    with pytest.raises(DecodeError, match=r"001\.jpg: cannot decode JPEG"):
        collect(folder, backend="torchvision")


def test_mixed_frame_sizes_are_an_error(tmp_path):
    folder = write_frames(tmp_path / "f", frames(0, n=2))
    write_frames(tmp_path / "g", np.zeros((1, 20, 20, 3), np.uint8), start=2)
    (tmp_path / "g" / "002.jpg").rename(folder / "002.jpg")
    with pytest.raises(DecodeError, match=r"002\.jpg: frame size"):
        collect(folder)


def test_backend_validation(video_path, tmp_path):
    folder = write_frames(tmp_path / "f", frames(0, n=2))
    with pytest.raises(ValueError, match="cannot decode video clip"):
        collect(video_path, backend="pil")
    with pytest.raises(ValueError, match="cannot decode frames clip"):
        collect(folder, backend="pyav")
    with pytest.raises(ValueError, match="unknown decoding backend 'ffmpeg'"):
        collect(video_path, backend="ffmpeg")
    with pytest.raises(ValueError, match="batch_size"):
        collect(video_path, batch_size=0)


def test_streaming_is_bounded(tmp_path):
    # A long video comes out in batches of at most batch_size frames, never all at once.
    long = write_video(tmp_path / "long.avi", frames(0, n=200))
    sizes = [len(x) for _, x in iter_frames(long, batch_size=16)]
    assert max(sizes) == 16 and sum(sizes) == 200


def test_h264_mp4_decodes(tmp_path):
    mp4 = write_video(tmp_path / "c.mp4", frames(0), codec="libx264")
    assert probe(mp4).num_frames == T
    assert len(collect(mp4)[1]) == T


def test_empty_range_and_start_past_the_end(video_path, tmp_path):
    folder = write_frames(tmp_path / "f", frames(0, n=4))
    assert collect_or_empty(video_path, start=0, stop=0) == 0
    for backend in ("pyav", "decord"):
        if backend == "decord":
            pytest.importorskip("decord")
        with pytest.raises(DecodeError, match=r"clip\.avi: start frame 40 is past the end"):
            collect(video_path, backend=backend, start=40)
    with pytest.raises(DecodeError, match="start frame 9 is past the end"):
        collect(folder, start=9)


def collect_or_empty(source, **kw) -> int:
    return sum(len(x) for _, x in iter_frames(source, **kw))
