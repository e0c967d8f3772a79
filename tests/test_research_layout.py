"""The research layout (``<name>/training/frames/01/000.jpg``, ``testing/frames``, ``<name>.mat`` or
``frame_labels_<name>.npy``; ShanghaiTech's ``training/frames/01_001``) reads beside the original archives: labels come
out right, the layout is found from the root, label files that do not fit the frames are one error naming them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import frames, labels_from_spans, make_avenue, make_ped2, make_shanghaitech, write_frames
from vad.cli import main
from vad.errors import ConfigError, DatasetLayoutError, LabelError
from vad.io import read_dataset
from vad.io.research import describe_layout, gt_spans, read_research, research_root
from vad.offline.pipeline import inspect_dataset

N, H, W = 8, 32, 48  # frames per clip, frame size
# Per test clip, anomalous (first, last) frames, 1-based inclusive: the first and last frames, several spans, none.
SPANS = [[(1, 3)], [(4, 4), (7, 8)], []]


def clip_frames(seed: int, n: int = N) -> np.ndarray:
    return np.ascontiguousarray(frames(seed, n)[:, :H, :W])  # (n, H, W, 3)


def write_gt_mat(path: Path, spans: list[list[tuple[int, int]]], dtype: type = np.float64) -> Path:
    """``gt``: a 1xK MATLAB cell (object array), per clip a 2xS array of [first; last] columns."""
    import scipy.io

    gt = np.empty((1, len(spans)), dtype=object)
    for k, clip in enumerate(spans):
        gt[0, k] = np.array(clip, dtype=dtype).T.reshape(2, -1)
    scipy.io.savemat(path, {"gt": gt})
    return path


def make_research(root: Path, name: str, labels: str = "mat", spans: list[list[tuple[int, int]]] = SPANS,
                  n_train: int = 2, mat_dtype: type = np.float64) -> Path:
    """``root`` (the ``<name>`` folder) in the research layout: ``n_train`` training and ``len(spans)`` test clips of
    ``N`` JPEG frames (``000.jpg`` ...), frame labels in ``<name>.mat`` (``labels="mat"``), ``frame_labels_<name>.npy``
    of shape (N,) (``"npy"``) or (1, N) (``"npy_row"``), or both (``"both"``)."""
    for i in range(1, n_train + 1):
        write_frames(root / "training" / "frames" / f"{i:02d}", clip_frames(i))
    for i in range(1, len(spans) + 1):
        write_frames(root / "testing" / "frames" / f"{i:02d}", clip_frames(10 + i))
    if labels in ("mat", "both"):
        write_gt_mat(root / f"{name}.mat", spans, mat_dtype)
    if labels in ("npy", "npy_row", "both"):
        flat = np.concatenate([labels_from_spans(s, N) for s in spans])
        np.save(root / f"frame_labels_{name}.npy", flat[None] if labels == "npy_row" else flat)
    return root


def make_sht_research(root: Path) -> Path:
    """ShanghaiTech in the research layout: training frame folders 01_001, 01_002, 02_001; test clips 01_0001 and
    02_0001 with per-clip ``test_frame_mask/*.npy``."""
    for i, clip in enumerate(["01_001", "01_002", "02_001"]):
        write_frames(root / "training" / "frames" / clip, clip_frames(i))
    (root / "testing" / "test_frame_mask").mkdir(parents=True)
    for i, (clip, spans) in enumerate([("01_0001", [(2, 5)]), ("02_0001", [(8, 8)])]):
        write_frames(root / "testing" / "frames" / clip, clip_frames(20 + i))
        np.save(root / "testing" / "test_frame_mask" / f"{clip}.npy", labels_from_spans(spans, N))
    return root


def assert_span_labels(clips, spans=SPANS) -> None:
    assert [c.name for c in clips] == [f"{i:02d}" for i in range(1, len(spans) + 1)]
    for clip, s in zip(clips, spans, strict=True):
        assert clip.labels.dtype == np.uint8 and clip.labels.shape == (N,)
        np.testing.assert_array_equal(clip.labels, labels_from_spans(s, N))


@pytest.mark.parametrize("name", ["ped1", "ped2", "avenue"])
@pytest.mark.parametrize("labels", ["mat", "npy", "npy_row", "both"])
def test_research_layout_reads_every_label_file(tmp_path, name, labels):
    root = make_research(tmp_path / name, name, labels)
    train = read_dataset(name, root, "train")
    assert [c.name for c in train] == ["01", "02"]
    assert all(c.kind == "frames" and c.labels is None and c.num_frames == N for c in train)
    assert train[0].frame_size == (H, W)
    assert train[0].frame_paths[0].name == "000.jpg"
    test = read_dataset(name, root, "test")
    assert_span_labels(test)
    np.testing.assert_array_equal(test[0].labels, [1, 1, 1, 0, 0, 0, 0, 0])  # 1-based, inclusive: frames 1..3
    np.testing.assert_array_equal(test[1].labels, [0, 0, 0, 1, 0, 0, 1, 1])  # 4..4 and 7..8, the last frame
    assert all(c.pixel_mask is None for c in test)


def test_uint8_gt_cell_as_in_the_real_ped2_mat(tmp_path):
    root = make_research(tmp_path / "ped2", "ped2", mat_dtype=np.uint8)
    assert [s for s in gt_spans(root / "ped2.mat")] == SPANS
    assert_span_labels(read_dataset("ped2", root, "test"))


def test_frames_in_natural_order_from_one(tmp_path):
    root = make_research(tmp_path / "ped2", "ped2", spans=[[(10, 12)]])
    clip = root / "testing" / "frames" / "01"
    for p in clip.iterdir():
        p.unlink()
    write_frames(clip, clip_frames(3, 12), start=1, width=1)  # 1.jpg .. 12.jpg, unpadded
    (test,) = read_dataset("ped2", root, "test")
    assert [p.name for p in test.frame_paths[:3]] == ["1.jpg", "2.jpg", "3.jpg"]
    assert test.frame_paths[-1].name == "12.jpg" and test.num_frames == 12
    np.testing.assert_array_equal(np.flatnonzero(test.labels), [9, 10, 11])


def test_root_may_be_the_folder_above(tmp_path):
    make_research(tmp_path / "data" / "ped2", "ped2")
    make_research(tmp_path / "data" / "Avenue", "avenue", spans=[[(2, 2)]])
    assert research_root("ped2", tmp_path / "data") == tmp_path / "data" / "ped2"
    assert_span_labels(read_dataset("ped2", tmp_path / "data", "test"))
    (test,) = read_dataset("avenue", tmp_path / "data", "test")  # its own folder, case ignored
    assert test.path.parent.parent.parent.name == "Avenue"
    layout = describe_layout("ped2", tmp_path / "data")
    assert layout == f"research (training/frames, testing/frames, ped2.mat) in {tmp_path / 'data' / 'ped2'}"
    with pytest.raises(DatasetLayoutError, match=r"Train folder not found"):  # no ped1 folder: the original reader
        read_dataset("ped1", tmp_path / "data", "train")


@pytest.mark.parametrize(("name", "build", "expected"), [
    ("ped2", make_ped2, "original archive (Train, Test, Test/UCSDped2.m)"),
    ("avenue", lambda p: make_avenue(p, archives=True),
     "original archive (Avenue Dataset/training_videos, Avenue Dataset/testing_videos, "
     "ground_truth_demo/testing_label_mask)"),
    ("shanghaitech", make_shanghaitech,
     "original archive (training/videos, testing/frames, testing/test_frame_mask, testing/test_pixel_mask)"),
    ("ped1", lambda p: make_research(p, "ped1", "both"),
     "research (training/frames, testing/frames, ped1.mat, frame_labels_ped1.npy)"),
    ("shanghaitech", make_sht_research, "research (training/frames, testing/frames, testing/test_frame_mask)"),
])
def test_layout_found_from_the_root(tmp_path, name, build, expected):
    root = build(tmp_path / name)
    assert describe_layout(name, root) == expected
    assert (research_root(name, root) is None) == expected.startswith("original")
    assert read_dataset(name, root, "train") and read_dataset(name, root, "test")
    assert describe_layout("folder", root) is None


def test_original_archives_still_read_as_before(tmp_path, ped2_root, shanghaitech_root):
    assert [c.name for c in read_dataset("ped2", ped2_root, "test")] == ["Test001", "Test002"]
    assert read_dataset("shanghaitech", shanghaitech_root, "train")[0].kind == "video"
    avenue = make_avenue(tmp_path / "avenue", published={1: [(2, 4)], 2: [(7, 9)]})
    assert read_dataset("avenue", avenue, "test")[0].pixel_mask.suffix == ".mat"  # masks by default
    assert read_dataset("avenue", avenue, "test", frame_labels="published")[0].labels[1:4].all()


def test_shanghaitech_research_layout_and_scenes(tmp_path):
    root = make_sht_research(tmp_path / "shanghaitech")
    train = read_dataset("shanghaitech", root, "train")
    assert [(c.name, c.scene, c.kind) for c in train] == [
        ("01_001", "01", "frames"), ("01_002", "01", "frames"), ("02_001", "02", "frames")]
    assert [c.name for c in read_dataset("shanghaitech", root, "train", scenes=[2])] == ["02_001"]
    test = read_dataset("shanghaitech", tmp_path, "test", scenes=["01"])  # the folder above: shanghaitech/
    assert [c.name for c in test] == ["01_0001"]
    np.testing.assert_array_equal(np.flatnonzero(test[0].labels), [1, 2, 3, 4])
    with pytest.raises(DatasetLayoutError, match="no train clips in scenes"):
        read_dataset("shanghaitech", root, "train", scenes=[3])


def test_avenue_research_labels_are_its_label_file(tmp_path):
    root = make_research(tmp_path / "avenue", "avenue")
    assert_span_labels(read_dataset("avenue", root, "test", frame_labels="published"))
    with pytest.raises(ConfigError, match=r"avenue is Avenue in the research layout, which has no pixel masks"):
        read_dataset("avenue", root, "test", frame_labels="masks")


def test_mat_entry_count_differs_from_the_test_folders(tmp_path):
    root = make_research(tmp_path / "ped2", "ped2")
    write_gt_mat(root / "ped2.mat", SPANS[:2])
    with pytest.raises(LabelError, match=rf"{root / 'ped2.mat'}: 2 gt entries for the 3 test clip folders in "
                                         rf"{root / 'testing' / 'frames'}; expected one entry per folder"):
        read_dataset("ped2", root, "test")


def test_span_beyond_the_clip(tmp_path):
    root = make_research(tmp_path / "ped1", "ped1", spans=[[(1, 2)], [(5, N + 1)]])
    with pytest.raises(LabelError, match=rf"ped1\.mat gt entry 2 \(test clip {root / 'testing' / 'frames' / '02'}, "
                                         rf"{N} frames\): anomalous range 5:{N + 1} outside frames 1\.\.{N}"):
        read_dataset("ped1", root, "test")


@pytest.mark.parametrize(("delta", "hint"), [(-1, ""), (3, r" \(labels for more clips than this copy holds\?\)")])
def test_npy_length_differs_from_the_test_frames(tmp_path, delta, hint):
    root = make_research(tmp_path / "ped2", "ped2", "npy")
    np.save(root / "frame_labels_ped2.npy", np.zeros((1, 3 * N + delta), np.uint8))
    with pytest.raises(LabelError, match=rf"frame_labels_ped2\.npy: {3 * N + delta} frame labels for the {3 * N} "
                                         rf"frames of the 3 test clip folders in {root / 'testing' / 'frames'}{hint}; "
                                         "expected one label per frame"):
        read_dataset("ped2", root, "test")


def test_bad_npy_shapes_and_values(tmp_path):
    root = make_research(tmp_path / "ped2", "ped2", "npy")
    np.save(root / "frame_labels_ped2.npy", np.zeros((2, 3 * N), np.uint8))
    with pytest.raises(LabelError, match=r"shape \(2, 24\); expected \(N,\) or \(1, N\)"):
        read_dataset("ped2", root, "test")
    np.save(root / "frame_labels_ped2.npy", np.full(3 * N, 2, np.uint8))
    with pytest.raises(LabelError, match="frame_labels_ped2.npy: frame labels must be 0 or 1"):
        read_dataset("ped2", root, "test")


def test_mat_and_npy_must_agree(tmp_path):
    root = make_research(tmp_path / "avenue", "avenue", "both")
    flat = np.load(root / "frame_labels_avenue.npy")
    flat[N + 1] = 1  # test clip 02, frame 2
    np.save(root / "frame_labels_avenue.npy", flat)
    with pytest.raises(LabelError, match=r"avenue\.mat and .*frame_labels_avenue\.npy: frame labels of test clip 02 "
                                         r".* disagree at 1 frames \(2; 1-based\)"):
        read_dataset("avenue", root, "test")


def test_missing_label_file_names_both_places(tmp_path):
    root = make_research(tmp_path / "ped2", "ped2", labels="none")
    assert len(read_dataset("ped2", root, "train")) == 2  # training needs no labels
    with pytest.raises(LabelError, match=rf"looked for {root / 'ped2.mat'} and {root / 'frame_labels_ped2.npy'}"):
        read_dataset("ped2", root, "test")


def test_bad_gt_entry(tmp_path):
    import scipy.io

    root = make_research(tmp_path / "ped2", "ped2")
    gt = np.empty((1, 3), dtype=object)
    gt[0, 0], gt[0, 1], gt[0, 2] = np.ones((2, 1)), np.ones((3, 2)), np.zeros((2, 0))
    scipy.io.savemat(root / "ped2.mat", {"gt": gt})
    with pytest.raises(LabelError, match=r"ped2\.mat: gt entry 2 is a float64 array of shape \(3, 2\); expected gt"):
        read_dataset("ped2", root, "test")
    scipy.io.savemat(root / "ped2.mat", {"labels": gt})
    with pytest.raises(LabelError, match=r"ped2\.mat: no 'gt' variable; found \['labels'\]"):
        read_dataset("ped2", root, "test")


def test_read_research_refuses_other_datasets_and_splits(tmp_path):
    root = make_research(tmp_path / "ped2", "ped2")
    with pytest.raises(ValueError, match="split must be"):
        read_research("ped2", root, "val")
    with pytest.raises(ValueError, match="read_shanghaitech reads both"):
        read_research("shanghaitech", root, "test")


def test_two_research_folders_for_one_dataset(tmp_path):
    make_research(tmp_path / "ped2", "ped2")
    make_research(tmp_path / "UCSDped2", "ped2")
    with pytest.raises(DatasetLayoutError, match="both hold ped2 in the research layout"):
        read_dataset("ped2", tmp_path, "train")


def test_inspect_names_the_layout_and_compares_counts(tmp_path, capsys):
    root = make_research(tmp_path / "ped2", "ped2", mat_dtype=np.uint8)
    out = inspect_dataset(root, "ped2", decode=True)
    printed = capsys.readouterr().out
    assert "ped2 layout: research (training/frames, testing/frames, ped2.mat)\n" in printed
    assert "test: 3 clips, 24 frames, 6 anomalous, pixel ground truth for 0 of 3 clips" in printed
    assert "warning: 3 test clips, published 12" in printed and "warning: 24 test frames, published 2010" in printed
    assert "warning: 16 train frames, published 2550" in printed
    assert printed.count("all readable") == 2
    assert [c.name for c in out["train"]] == ["01", "02"]
    inspect_dataset(make_ped2(tmp_path / "UCSDped2"), "ped2", splits=["test"])
    assert "ped2 layout: original archive (Train, Test, Test/UCSDped2.m)" in capsys.readouterr().out


def test_cli_reports_a_label_mismatch_in_one_line(tmp_path, capsys):
    root = make_research(tmp_path / "ped2", "ped2")
    write_gt_mat(root / "ped2.mat", SPANS * 2)
    assert main(["inspect", "--data", str(root), "--dataset", "ped2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {root / 'ped2.mat'}: 6 gt entries for the 3 test clip")
