"""Roots laid out like the real downloads read (and decode) without moving a file; masks are checked against their
clips when the dataset is read; ``inspect`` compares a copy with the published counts."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import AVENUE_SPANS, H, T, W, labels_for, make_avenue, make_ped1, make_ped2, make_shanghaitech
from vad.errors import DatasetLayoutError, LabelError
from vad.io import load_pixel_mask, read_dataset
from vad.io.published import PUBLISHED, compare_published
from vad.io.records import Clip
from vad.offline.pipeline import inspect_dataset


def test_avenue_archives_side_by_side(tmp_path):
    root = make_avenue(tmp_path / "avenue", archives=True)
    assert not (root / "training_videos").exists()  # nothing moved
    train = read_dataset("avenue", root, "train")
    assert [c.path.parent.parent.name for c in train] == ["Avenue Dataset"] * 2
    test = read_dataset("avenue", root, "test")
    for clip, i in zip(test, (1, 2), strict=True):
        np.testing.assert_array_equal(clip.labels, labels_for(T, *AVENUE_SPANS[i]))
        assert clip.pixel_mask.parent.parent.name == "ground_truth_demo"
    masks = load_pixel_mask(test[0])
    assert masks.shape == (T, H, W)
    np.testing.assert_array_equal(masks.reshape(T, -1).any(1), test[0].labels.astype(bool))


def test_avenue_layout_errors_name_every_place_looked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"looked for .*empty/training_videos and .*empty/Avenue Dataset/"
                                                 r"training_videos"):
        read_dataset("avenue", tmp_path / "empty", "train")
    root = make_avenue(tmp_path / "avenue", archives=True)
    (root / "ground_truth_demo").rename(root / "elsewhere")
    with pytest.raises(DatasetLayoutError, match=r"label folder .*not found; looked for .*avenue/testing_label_mask "
                                                 r"and .*avenue/ground_truth_demo/testing_label_mask"):
        read_dataset("avenue", root, "test")


def test_avenue_published_labels_option(tmp_path):
    published = {1: [(2, 4)], 2: [(7, 9), (12, 12)]}
    root = make_avenue(tmp_path / "avenue", archives=True, published=published)
    masks = read_dataset("avenue", root, "test")
    pub = read_dataset("avenue", root, "test", frame_labels="published")
    for clip, spans in zip(pub, published.values(), strict=True):
        expected = np.zeros(T, np.uint8)
        for a, b in spans:
            expected[a - 1 : b] = 1
        np.testing.assert_array_equal(clip.labels, expected)
    assert not np.array_equal(pub[0].labels, masks[0].labels)
    assert pub[0].pixel_mask == masks[0].pixel_mask  # pixel ground truth is the masks either way
    with pytest.raises(ValueError, match="frame_labels is an Avenue option"):
        read_dataset("ped2", root, "test", frame_labels="published")
    with pytest.raises(ValueError, match="'any' unknown"):
        read_dataset("avenue", root, "test", frame_labels="any")
    (root / "avenue.mat").unlink()
    with pytest.raises(LabelError, match=r"avenue\.mat from ano_pred_cvpr2018.* not found; looked for .*avenue/avenue"):
        read_dataset("avenue", root, "test", frame_labels="published")


def test_avenue_published_file_must_cover_every_video(tmp_path):
    root = make_avenue(tmp_path / "avenue", published={1: [(2, 4)]})
    with pytest.raises(LabelError, match=r"avenue\.mat: 1 gt cells for 2 test videos"):
        read_dataset("avenue", root, "test", frame_labels="published")


def test_avenue_masks_checked_against_the_video(avenue_root):
    import scipy.io

    label = avenue_root / "testing_label_mask" / "2_label.mat"
    vol = np.empty((1, T), dtype=object)
    for t in range(T):
        vol[0, t] = np.zeros((W, H), np.uint8)  # transposed: width x height
    scipy.io.savemat(label, {"volLabel": vol})
    with pytest.raises(LabelError, match=rf"2_label\.mat: pixel masks of shape \({T}, {W}, {H}\).*expected \({T}, {H}, "
                                         rf"{W}\)"):
        read_dataset("avenue", avenue_root, "test")
    scipy.io.savemat(label, {"volLabel": vol[:, : T - 2]})
    with pytest.raises(LabelError, match=rf"2_label\.mat: pixel masks of shape \({T - 2}, "):
        read_dataset("avenue", avenue_root, "test")


def test_shanghaitech_pixel_masks_checked_when_read(shanghaitech_root):
    pixel = shanghaitech_root / "testing" / "test_pixel_mask" / "02_0001.npy"
    np.save(pixel, np.zeros((T, H, W + 8), np.uint8))
    with pytest.raises(LabelError, match=rf"02_0001\.npy: pixel masks of shape \({T}, {H}, {W + 8}\).*expected "
                                         rf"\({T}, {H}, {W}\): one {H}x{W} mask per frame"):
        read_dataset("shanghaitech", shanghaitech_root, "test")
    np.save(pixel, np.zeros((T + 1, H, W), np.uint8))
    with pytest.raises(LabelError, match=rf"02_0001\.npy: pixel masks of shape \({T + 1}, "):
        read_dataset("shanghaitech", shanghaitech_root, "test")


def test_shanghaitech_root_one_level_too_high(tmp_path):
    make_shanghaitech(tmp_path / "downloads" / "shanghaitech")
    with pytest.raises(DatasetLayoutError, match=r"looked for .*downloads/training/videos; .*downloads/shanghaitech "
                                                 r"holds it, so .*downloads looks one level above the dataset root"):
        read_dataset("shanghaitech", tmp_path / "downloads", "train")


@pytest.mark.parametrize(("name", "build", "expect"), [
    ("avenue", lambda p: make_avenue(p, archives=True),
     ["test: 2 clips, 32 frames, 10 anomalous, pixel ground truth for 2 of 2 clips",
      "warning: 2 test clips, published 21", "warning: 32 test frames, published 15324"]),
    ("ped2", lambda p: make_ped2(p, with_gt=False),
     ["test: 2 clips, 32 frames, 13 anomalous, pixel ground truth for 0 of 2 clips",
      "warning: 2 train clips, published 16"]),
    ("ped1", make_ped1,
     ["test: 3 clips, 48 frames, 32 anomalous, pixel ground truth for 1 of 3 clips",
      "warning: 3 test clips, published 36", "warning: 48 test frames, published 7200"]),
    ("shanghaitech", make_shanghaitech,
     ["train: 3 clips, 48 frames", "    scene 01: 2 clips, 32 frames", "test: 2 clips, 32 frames, 8 anomalous",
      "    scene 02: 1 clips, 16 frames, 3 anomalous", "warning: 3 train clips, published 330"]),
])
def test_inspect_decodes_real_layouts_and_compares_counts(tmp_path, capsys, name, build, expect):
    root = build(tmp_path / name)
    out = inspect_dataset(root, name, decode=True)
    printed = capsys.readouterr().out
    assert printed.count("all readable") == 2
    for line in expect:
        assert line in printed, f"{line!r} not in:\n{printed}"
    assert "incomplete copy?" in printed
    assert sum(c.num_frames for c in out["test"]) == T * len(out["test"])


def _fake_clips(n: int, frames: int) -> list[Clip]:
    """Clips with ``frames`` frame paths each (never opened: counts only)."""
    return [Clip(name=f"c{i}", path=f"c{i}", kind="frames", frame_paths=("x.tif",) * frames) for i in range(n)]


def test_compare_published_counts():
    assert compare_published("ped1", "test", _fake_clips(36, 200)) == [
        f"  clips: 36, as published ({PUBLISHED['ped1'].source})",
        f"  frames: 7200, as published ({PUBLISHED['ped1'].source})",
    ]
    short = compare_published("ped1", "train", _fake_clips(33, 200))
    assert short[0].startswith("  warning: 33 train clips, published 34") and "incomplete copy?" in short[0]
    assert short[1].startswith("  warning: 6600 train frames, published 6800")
    assert "more than published" in compare_published("ped2", "test", _fake_clips(13, 180))[0]
    ped2 = _fake_clips(11, 180) + _fake_clips(1, 30)  # the clips vary in length: 2,010 frames in all
    assert compare_published("ped2", "test", ped2) == [
        f"  clips: 12, as published ({PUBLISHED['ped2'].source})",
        f"  frames: 2010, as published ({PUBLISHED['ped2'].source})"]
    assert "not compared for a scene selection" in compare_published("shanghaitech", "test", [], scenes=[1])[0]
    assert compare_published("folder", "test", _fake_clips(1, 5)) == []
