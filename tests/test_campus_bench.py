"""The reader on the real-video benchmark built from ../shared/bench (skipped where it is absent)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vad.io import iter_frames, load_pixel_mask, read_dataset

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "bench"


@pytest.fixture(scope="module")
def campus(tmp_path_factory) -> Path:
    script = BENCH / "make_campus_bench.py"
    if not script.is_file() or not (BENCH / "vtest.avi").is_file():
        pytest.skip(f"campus benchmark sources not found at {BENCH} (only present beside the project checkout)")
    out = tmp_path_factory.mktemp("campus")
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.mark.slow
def test_campus_counts_and_labels(campus):
    train = read_dataset("shanghaitech", campus, "train")
    test = read_dataset("shanghaitech", campus, "test")
    assert len(train) == 6 and sum(c.num_frames for c in train) == 420
    assert len(test) == 5 and sum(c.num_frames for c in test) == 375
    assert sum(sum(len(f) for _, f in iter_frames(c)) for c in train) == 420  # decoded, not just declared
    for clip in test:
        masks = load_pixel_mask(clip)
        assert masks.shape == (clip.num_frames, 576, 768)
        np.testing.assert_array_equal(np.asarray(masks).reshape(len(masks), -1).any(1), clip.labels.astype(bool))
    assert sum(int(c.labels.sum()) for c in test) > 0
    assert read_dataset("shanghaitech", campus, "test", scenes=[1]) != []
