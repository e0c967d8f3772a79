from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import T, frames, labels_for, make_ped2, write_frames, write_video
from vad.errors import DatasetLayoutError, DecodeError, LabelError
from vad.io import load_pixel_mask, read_dataset


def test_shanghaitech_train_and_test(shanghaitech_root):
    train = read_dataset("shanghaitech", shanghaitech_root, "train")
    assert [c.name for c in train] == ["01_001", "01_002", "02_001"]
    assert [c.scene for c in train] == ["01", "01", "02"]
    assert all(c.kind == "video" and c.labels is None for c in train)
    assert train[0].num_frames == T and train[0].fps == pytest.approx(10.0)
    test = read_dataset("shanghaitech", shanghaitech_root, "test")
    assert [c.name for c in test] == ["01_0001", "02_0001"]
    np.testing.assert_array_equal(test[0].labels, labels_for(T, 4, 9))
    assert test[0].labels.dtype == np.uint8
    pm = load_pixel_mask(test[0])
    assert pm.shape == (T, 48, 64)
    np.testing.assert_array_equal(pm.reshape(T, -1).any(1), test[0].labels.astype(bool))


def test_shanghaitech_scene_selection(shanghaitech_root):
    assert [c.name for c in read_dataset("shanghaitech", shanghaitech_root, "train", scenes=[1])] == [
        "01_001", "01_002"]
    assert [c.name for c in read_dataset("shanghaitech", shanghaitech_root, "test", scenes=["02"])] == ["02_0001"]
    with pytest.raises(DatasetLayoutError, match="scenes"):
        read_dataset("shanghaitech", shanghaitech_root, "test", scenes=[7])
    with pytest.raises(ValueError, match="scene 'x'"):
        read_dataset("shanghaitech", shanghaitech_root, "test", scenes=["x"])


def test_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    for name in ("shanghaitech", "avenue", "ped1", "ped2", "folder"):
        with pytest.raises(DatasetLayoutError, match="nowhere"):
            read_dataset(name, missing)


def test_wrong_layout_names_the_expected_folder(tmp_path, avenue_root):
    # An Avenue tree read as ShanghaiTech.
    with pytest.raises(DatasetLayoutError, match=r"test frames folder not found; looked for .*testing/frames"):
        read_dataset("shanghaitech", avenue_root, "test")
    with pytest.raises(DatasetLayoutError, match=r"not found; looked for .*training/videos"):
        read_dataset("shanghaitech", avenue_root, "train")
    with pytest.raises(DatasetLayoutError, match="Train"):
        read_dataset("ped2", avenue_root, "train")


def test_mask_length_mismatch_names_both_files(shanghaitech_root):
    mask = shanghaitech_root / "testing" / "test_frame_mask" / "01_0001.npy"
    np.save(mask, np.zeros(T - 1, np.uint8))
    with pytest.raises(LabelError, match=rf"01_0001\.npy: {T - 1} frame labels .* has {T} frames"):
        read_dataset("shanghaitech", shanghaitech_root, "test")


def test_missing_frame_mask_and_bad_label_values(shanghaitech_root):
    mask = shanghaitech_root / "testing" / "test_frame_mask" / "02_0001.npy"
    np.save(mask, np.full(T, 3, np.uint8))
    with pytest.raises(LabelError, match="must be 0 or 1"):
        read_dataset("shanghaitech", shanghaitech_root, "test")
    mask.unlink()
    with pytest.raises(LabelError, match=r"02_0001\.npy: frame mask missing"):
        read_dataset("shanghaitech", shanghaitech_root, "test")


def test_empty_clip_folder_is_an_error(shanghaitech_root):
    (shanghaitech_root / "testing" / "frames" / "01_0002").mkdir()
    np.save(shanghaitech_root / "testing" / "test_frame_mask" / "01_0002.npy", np.zeros(0, np.uint8))
    with pytest.raises(DatasetLayoutError, match="01_0002: no frames found"):
        read_dataset("shanghaitech", shanghaitech_root, "test")


def test_avenue(avenue_root):
    train = read_dataset("avenue", avenue_root, "train")
    assert [c.name for c in train] == ["01", "02"]
    test = read_dataset("avenue", avenue_root, "test")
    np.testing.assert_array_equal(test[0].labels, labels_for(T, 3, 8))
    np.testing.assert_array_equal(test[1].labels, labels_for(T, 6, 11))
    assert load_pixel_mask(test[1]).shape == (T, 48, 64)


def test_avenue_label_errors(avenue_root):
    import scipy.io

    scipy.io.savemat(avenue_root / "testing_label_mask" / "2_label.mat", {"other": np.zeros(3)})
    with pytest.raises(LabelError, match=r"2_label\.mat: no 'volLabel'"):
        read_dataset("avenue", avenue_root, "test")
    (avenue_root / "testing_label_mask" / "2_label.mat").unlink()
    with pytest.raises(LabelError, match=r"2_label\.mat: label file missing"):
        read_dataset("avenue", avenue_root, "test")


def test_ped2_labels_from_m_file(ped2_root):
    test = read_dataset("ped2", ped2_root, "test")
    assert [c.name for c in test] == ["Test001", "Test002"]
    np.testing.assert_array_equal(test[0].labels, labels_for(T, 4, 9))
    expected = np.zeros(T, np.uint8)
    expected[[0, 1, 2, 11, 12, 13, 14, 15]] = 1  # [1:3, 12:16], 1-based inclusive
    np.testing.assert_array_equal(test[1].labels, expected)
    assert all(c.labels is not None and c.pixel_mask is not None for c in test)
    assert test[0].pixel_mask.name == "Test001_gt"
    assert load_pixel_mask(test[0]).shape == (T, 48, 64)
    assert read_dataset("ped2", ped2_root, "train")[0].num_frames == T


def test_ped2_labels_from_gt_masks_without_m_file(tmp_path):
    a = read_dataset("ped2", make_ped2(tmp_path / "a", with_m=True), "test")
    b = read_dataset("ped2", make_ped2(tmp_path / "b", with_m=False), "test")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.labels, y.labels)
    assert b[1].labels.sum() == 8 and b[0].labels.sum() == 5


def test_folder_reader(tmp_path):
    root = tmp_path / "raw"
    write_video(root / "cam1.avi", frames(1))
    write_frames(root / "cam2", frames(2, n=5))
    (root / "notes.txt").write_text("ignored")
    clips = read_dataset("folder", root)
    assert [(c.name, c.kind, c.num_frames) for c in clips] == [("cam1", "video", T), ("cam2", "frames", 5)]
    assert [c.name for c in read_dataset("folder", root / "cam1.avi")] == ["cam1"]
    assert [c.name for c in read_dataset("folder", root / "cam2")] == ["cam2"]


def test_folder_reader_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no videos"):
        read_dataset("folder", tmp_path / "empty")
    note = tmp_path / "notes.txt"
    note.write_text("not a video")
    with pytest.raises(DecodeError, match=r"notes\.txt: not a video file"):
        read_dataset("folder", note)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # a symbolic link loop: one error line, not a RuntimeError
    with pytest.raises(DatasetLayoutError, match="loop: cannot be read"):
        read_dataset("folder", loop)


def test_folder_reader_keeps_every_source_of_a_name_apart(tmp_path):
    """Two cameras' day.mp4 below one input are two clips, named by their paths; a video and a frame folder of one
    name are two clips; a link back up the tree is read once."""
    for cam in ("cam1", "cam2"):
        write_video(tmp_path / "in" / "site" / cam / "day.mp4", frames(0))
    write_video(tmp_path / "in" / "a.avi", frames(1))
    write_frames(tmp_path / "in" / "a", frames(2, n=2))
    (tmp_path / "in" / "site" / "cam1" / "up").symlink_to(tmp_path / "in" / "site")
    clips = read_dataset("folder", tmp_path / "in")
    names = {c.name: c.path for c in clips}
    assert len(clips) == 4 and len(names) == 4
    assert names["site_cam1_day"] == tmp_path / "in" / "site" / "cam1" / "day.mp4"
    assert names["site_cam2_day"] == tmp_path / "in" / "site" / "cam2" / "day.mp4"
    assert {names[n].name for n in names if n.startswith("a")} == {"a.avi", "a"}


def test_unknown_dataset_and_split(shanghaitech_root):
    with pytest.raises(ValueError, match="unknown dataset 'ucf'"):
        read_dataset("ucf", shanghaitech_root)
    with pytest.raises(ValueError, match="split"):
        read_dataset("shanghaitech", shanghaitech_root, "val")
    with pytest.raises(ValueError, match="ShanghaiTech option"):
        read_dataset("avenue", shanghaitech_root, scenes=[1])


def test_truncated_training_video_is_named_when_decoded(shanghaitech_root):
    from vad.io import iter_frames

    video = shanghaitech_root / "training" / "videos" / "01_002.avi"
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    clips = read_dataset("shanghaitech", shanghaitech_root, "train")
    assert sum(len(x) for _, x in iter_frames(clips[0])) == T  # the good clip before it decodes fine
    with pytest.raises(DecodeError, match=r"01_002\.avi: (truncated|cannot be opened)"):
        list(iter_frames(clips[1]))


def test_hidden_and_stray_files_are_ignored(shanghaitech_root, avenue_root, ped2_root, tmp_path):
    """macOS copies add ._* AppleDouble files and __MACOSX folders; notebooks add .ipynb_checkpoints."""
    (shanghaitech_root / "training" / "videos" / "._01_001.avi").write_bytes(b"\x00" * 10)
    (shanghaitech_root / "testing" / "frames" / ".ipynb_checkpoints").mkdir()
    (avenue_root / "testing_videos" / "._01.avi").write_bytes(b"\x00" * 10)
    (ped2_root / "Test" / "._UCSDped2.m").write_bytes(b"\x00" * 10)
    assert len(read_dataset("shanghaitech", shanghaitech_root, "train")) == 3
    assert len(read_dataset("shanghaitech", shanghaitech_root, "test")) == 2
    assert len(read_dataset("avenue", avenue_root, "test")) == 2
    assert read_dataset("ped2", ped2_root, "test")[0].labels.sum() == 5
    raw = tmp_path / "raw"
    write_video(raw / "cam1.avi", frames(1))
    (raw / "__MACOSX").mkdir()
    assert [c.name for c in read_dataset("folder", raw)] == ["cam1"]
