from __future__ import annotations

import threading
import time

import pytest
import torch

from tests.helpers import T
from vad.io import read_dataset
from vad.io.dataset import NORMALIZATIONS, FrameStream, FrameTransform, make_loader, read_ahead


def seen(loader) -> list[tuple[str, int]]:
    out = []
    for batch in loader:
        assert batch["frames"].shape[0] == len(batch["clip"]) == len(batch["index"])
        out += list(zip(batch["clip"], batch["index"].tolist(), strict=True))
    return out


def test_transform_resizes_and_normalises():
    x = torch.full((2, 3, 48, 64), 255, dtype=torch.uint8)
    y = FrameTransform(size=(32, 40), normalization="imagenet")(x)
    assert y.shape == (2, 3, 32, 40) and y.dtype == torch.float32
    mean, std = NORMALIZATIONS["imagenet"]
    assert torch.allclose(y[0, :, 5, 5], (1 - torch.tensor(mean)) / torch.tensor(std), atol=1e-5)
    z = FrameTransform(size=None, normalization="lite0")(torch.full((1, 3, 4, 4), 127, dtype=torch.uint8))
    assert z.shape == (1, 3, 4, 4) and torch.allclose(z, torch.zeros_like(z), atol=1e-6)  # (127 - 127) / 128
    with pytest.raises(ValueError, match="normalization"):
        FrameTransform(normalization="nope")
    with pytest.raises(ValueError, match="uint8"):
        FrameTransform()(torch.zeros(1, 3, 4, 4))


def test_stream_in_order_one_clip_per_batch(shanghaitech_root):
    clips = read_dataset("shanghaitech", shanghaitech_root, "test")
    stream = FrameStream(clips, FrameTransform(size=(32, 32)), batch_size=5)
    batches = list(make_loader(stream))
    assert all(len(set(b["clip"])) == 1 for b in batches)
    assert batches[0]["frames"].shape == (5, 3, 32, 32)
    assert seen(batches) == [(c.name, i) for c in clips for i in range(T)]


def test_workers_split_clips_and_cover_every_frame_once(shanghaitech_root):
    clips = read_dataset("shanghaitech", shanghaitech_root, "train")
    stream = FrameStream(clips, FrameTransform(size=(32, 32)), batch_size=4)
    got = seen(make_loader(stream, num_workers=2))
    assert sorted(got) == sorted((c.name, i) for c in clips for i in range(T))


def test_shuffle_mixes_clips_covers_all_and_reshuffles_per_epoch(shanghaitech_root):
    clips = read_dataset("shanghaitech", shanghaitech_root, "train")
    stream = FrameStream(clips, FrameTransform(size=(16, 16)), batch_size=8, shuffle=True, shuffle_buffer=32, seed=1)
    first = seen(make_loader(stream))
    assert sorted(first) == sorted((c.name, i) for c in clips for i in range(T))
    assert first != sorted(first)
    assert any(len({c for c, _ in first[k:k + 8]}) > 1 for k in range(0, len(first), 8))
    assert seen(make_loader(stream)) == first  # same epoch, same order
    stream.set_epoch(1)
    assert seen(make_loader(stream)) != first


def test_frames_match_between_video_and_jpeg_paths(tmp_path):
    """The same frames stored as a video and as a JPEG folder reach the model as (nearly) the same tensors: both
    codecs are lossy, so closeness is measured against how far a different clip is."""
    from tests import helpers
    from vad.io.decode import as_clip

    data = helpers.frames(3)
    video = as_clip(helpers.write_video(tmp_path / "v.avi", data))
    jpegs = as_clip(helpers.write_frames(tmp_path / "j", data))
    other = as_clip(helpers.write_frames(tmp_path / "o", helpers.frames(4)[::-1].copy()))
    t = FrameTransform(size=(24, 24))
    x = {name: next(iter(make_loader(FrameStream([c], t, batch_size=T))))["frames"]
         for name, c in {"video": video, "jpeg": jpegs, "other": other}.items()}
    assert x["video"].shape == x["jpeg"].shape == (T, 3, 24, 24)
    same = (x["video"] - x["jpeg"]).abs().mean()
    assert same < 0.1 and same < (x["video"] - x["other"]).abs().mean() / 3


def test_stream_validation():
    with pytest.raises(ValueError, match="at least one clip"):
        FrameStream([], FrameTransform())


def test_read_ahead_keeps_order_overlaps_work_raises_where_the_loop_is_and_stops_when_closed():
    """Batches come out in order while the next one is produced beside the consumer's work; a source's error comes
    out of the consumer's loop after the batches before it; closing early stops the thread."""
    def slow(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"bad batch {i}")
            time.sleep(0.1)
            yield i

    t0, got = time.perf_counter(), []
    for b in read_ahead(slow(6)):
        time.sleep(0.1)  # the consumer's work on b
        got.append(b)
    assert got == list(range(6)) and time.perf_counter() - t0 < 1.0  # one after the other: 1.2 s
    failing = read_ahead(slow(5, fail_at=2))
    assert [next(failing), next(failing)] == [0, 1]
    with pytest.raises(ValueError, match="bad batch 2"):
        next(failing)
    produced = []

    def counting():
        for i in range(100):
            produced.append(i)
            yield i

    ahead = read_ahead(counting())
    assert next(ahead) == 0
    ahead.close()
    assert len(produced) <= 4 and not any(t.name == "vad-read-ahead" for t in threading.enumerate())
