from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import helpers  # noqa: E402


@pytest.fixture
def shanghaitech_root(tmp_path: Path) -> Path:
    return helpers.make_shanghaitech(tmp_path / "sht")


@pytest.fixture
def avenue_root(tmp_path: Path) -> Path:
    return helpers.make_avenue(tmp_path / "avenue")


@pytest.fixture
def ped2_root(tmp_path: Path) -> Path:
    return helpers.make_ped2(tmp_path / "ped2")


@pytest.fixture
def video_path(tmp_path: Path) -> Path:
    return helpers.write_video(tmp_path / "clip.avi", helpers.frames(0))
