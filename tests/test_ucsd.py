"""UCSD Ped1/Ped2 as the real archive ships them: the ``TestVideoFile{end+1}.gt_frame`` label files, ``_gt`` masks
for all (Ped2) or some (Ped1) test clips."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.helpers import PED1_SPANS, PED2_SPANS, T, labels_from_spans, make_ped1, make_ped2, ucsd_m, write_mask_folder
from vad.errors import DatasetLayoutError, LabelError
from vad.io import load_pixel_mask, read_dataset
from vad.io.ucsd import parse_ucsd_m


def test_parse_real_m_syntax(tmp_path):
    m = tmp_path / "UCSDped2.m"
    m.write_text("% ground truth\nTestVideoFile = {};\n\nTestVideoFile{end+1}.gt_frame = [61:180];\n"
                 "TestVideoFile{end+1}.gt_frame = [5:90, 140:200];  % two events\n"
                 "TestVideoFile{end+1}.gt_frame = [7];\n")
    assert parse_ucsd_m(m) == [(4, [(61, 180)]), (5, [(5, 90), (140, 200)]), (6, [(7, 7)])]
    m.write_bytes(ucsd_m(PED2_SPANS).encode())  # DOS line ends, as shipped
    assert [spans for _, spans in parse_ucsd_m(m)] == PED2_SPANS


@pytest.mark.parametrize(("line", "why"), [
    ("TestDataset.gt{2} = [1:3, 12:16];", "cannot parse 'TestDataset"),  # the syntax we used to invent
    ("TestVideoFile{end+1}.gt_frame = [1-3];", "cannot parse range '1-3'"),
    ("TestVideoFile{end+1}.gt_frame = [9:3];", "range '9:3' ends before it starts"),
    ("TestVideoFile{end+1}.gt_frame = [1:3", "cannot parse"),
])
def test_malformed_m_line_names_file_and_line(ped2_root, line, why):
    m = ped2_root / "Test" / "UCSDped2.m"
    m.write_text(f"TestVideoFile = {{}};\nTestVideoFile{{end+1}}.gt_frame = [5:9];\n{line}\n")
    with pytest.raises(LabelError, match=rf"UCSDped2\.m line 3: {why}"):
        read_dataset("ped2", ped2_root, "test")


def test_m_line_count_must_match_folder_count(ped2_root):
    m = ped2_root / "Test" / "UCSDped2.m"
    m.write_text(ucsd_m(PED2_SPANS[:1]))
    with pytest.raises(LabelError, match=r"UCSDped2\.m: 1 gt_frame lines for 2 test clip folders"):
        read_dataset("ped2", ped2_root, "test")
    m.write_text(ucsd_m([*PED2_SPANS, [(1, 2)]]))
    with pytest.raises(LabelError, match="3 gt_frame lines for 2 test clip folders"):
        read_dataset("ped2", ped2_root, "test")


def test_range_past_the_clip_names_line_and_clip(ped2_root):
    (ped2_root / "Test" / "UCSDped2.m").write_text(ucsd_m([[(5, 9)], [(1, 3), (12, 40)]]))
    with pytest.raises(LabelError, match=r"UCSDped2\.m line 3 \(Test002\): anomalous range 12:40 outside frames 1..16"):
        read_dataset("ped2", ped2_root, "test")


def test_labels_disagreeing_with_masks_name_clip_and_frames(ped2_root):
    gt = ped2_root / "Test" / "Test002_gt"
    shutil.rmtree(gt)
    lab = labels_from_spans(PED2_SPANS[1])
    lab[[3, 4]] = 1  # frames 4 and 5 marked in the masks only
    write_mask_folder(gt, lab)
    with pytest.raises(LabelError, match=r"UCSDped2\.m and .*Test002_gt: frame labels of Test002 disagree at 2 "
                                         r"frames \(4, 5; 1-based\).* marks 8 anomalous frames, the masks 10"):
        read_dataset("ped2", ped2_root, "test")


def test_ped2_without_gt_folders_reads_the_m_file(tmp_path):
    """The reported failure: with the real .m present and no _gt folders, reading stopped."""
    test = read_dataset("ped2", make_ped2(tmp_path / "p", with_gt=False), "test")
    for clip, spans in zip(test, PED2_SPANS, strict=True):
        np.testing.assert_array_equal(clip.labels, labels_from_spans(spans))
        assert clip.pixel_mask is None and load_pixel_mask(clip) is None


def test_no_m_file_and_no_masks_is_an_error(tmp_path):
    root = make_ped2(tmp_path / "p", with_m=False, with_gt=False)
    with pytest.raises(LabelError, match=r"UCSDped2\.m: frame-label file not found and no Test001_gt mask folder"):
        read_dataset("ped2", root, "test")


def test_ped1_masks_for_some_clips_labels_from_m(tmp_path):
    root = make_ped1(tmp_path / "UCSDped1")
    assert [c.name for c in read_dataset("ped1", root, "train")] == ["Train001", "Train002"]
    test = read_dataset("ped1", root, "test")
    assert [c.name for c in test] == ["Test001", "Test002", "Test003"]
    for clip, spans in zip(test, PED1_SPANS, strict=True):
        np.testing.assert_array_equal(clip.labels, labels_from_spans(spans))
    assert [c.pixel_mask is not None for c in test] == [False, True, False]
    assert load_pixel_mask(test[0]) is None
    masks = load_pixel_mask(test[1])
    assert masks.shape == (T, 48, 64)
    np.testing.assert_array_equal(masks.reshape(T, -1).any(1), test[1].labels.astype(bool))
    (root / "Test" / "UCSDped1.m").unlink()  # Ped1's masks cannot stand in: most clips have none
    with pytest.raises(LabelError, match=r"UCSDped1\.m: frame-label file not found and no Test001_gt"):
        read_dataset("ped1", root, "test")


def test_ucsd_root_one_level_too_high_says_which_folder_to_pass(tmp_path):
    top = tmp_path / "UCSD_Anomaly_Dataset.v1p2"
    make_ped2(top / "UCSDped2")
    with pytest.raises(DatasetLayoutError, match=r"looked for .*v1p2/Train; .*UCSDped2 holds it, .*pass .*UCSDped2"):
        read_dataset("ped2", top, "train")
    make_ped1(top / "UCSDped1")  # the archive unpacks both
    with pytest.raises(DatasetLayoutError, match=r"v1p2/Train; .*v1p2/UCSDped1, .*v1p2/UCSDped2 hold it, .*one level"):
        read_dataset("ped2", top, "train")


def test_gt_masks_of_the_wrong_size_or_count_are_named(ped2_root):
    gt = ped2_root / "Test" / "Test001_gt"
    shutil.rmtree(gt)
    write_mask_folder(gt, labels_from_spans(PED2_SPANS[0]), size=(24, 32))
    with pytest.raises(LabelError, match=r"Test001_gt: pixel masks of shape \(16, 24, 32\) .* expected \(16, 48, 64\)"):
        read_dataset("ped2", ped2_root, "test")
    shutil.rmtree(gt)
    write_mask_folder(gt, labels_from_spans(PED2_SPANS[0]))
    (gt / "016.bmp").unlink()
    with pytest.raises(LabelError, match=r"Test001_gt: pixel masks of shape \(15, 48, 64\) .* expected \(16, 48, 64\)"):
        read_dataset("ped2", ped2_root, "test")
