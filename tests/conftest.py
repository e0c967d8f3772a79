from __future__ import annotations

from pathlib import Path

import pytest

from tests import helpers
from tests.helpers import TINY, tiny
from vad.cli import console_logging
from vad.config import RunConfig


@pytest.fixture(autouse=True)
def _console_log() -> None:
    """vad's log on the console as the CLI shows it (information on stdout, notes on stderr), for tests that call
    the library directly and read what a user is told."""
    console_logging(0)

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


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> Path:
    """Normal training videos and two test clips with a pasted anomaly (read-only: tests write elsewhere)."""
    return helpers.make_anomaly_scene(tmp_path_factory.mktemp("scene"))


def _train(scene: Path, cfg: RunConfig, run: Path) -> Path:
    from vad.io import read_dataset
    from vad.offline.train import train

    train(read_dataset("shanghaitech", scene, "train"), cfg, run, device="cpu", progress=False)
    return run


@pytest.fixture(scope="session")
def trained(scene: Path, tmp_path_factory) -> Path:
    """A run folder with STPM trained on ``scene`` with :data:`TINY`; shared by every test file, so tests read
    it and write their outputs to their own ``tmp_path``."""
    return _train(scene, TINY, tmp_path_factory.mktemp("stpm"))


@pytest.fixture(scope="session", params=["rstpm", "mkd"])
def trained_method(request, scene: Path, tmp_path_factory) -> tuple[str, Path]:
    """``(method, run folder)`` for RSTPM and MKD trained like :func:`trained`."""
    return request.param, _train(scene, tiny(request.param), tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def exported_run(trained: Path, scene: Path, tmp_path_factory) -> Path:
    """A run folder of :func:`trained` (configured on ``scene``) exported once by ``vad export`` to ONNX, and to
    OpenVINO IR where OpenVINO is installed (read-only: tests copy it with :func:`tests.helpers.copy_run`, whose
    export is then reused, not made again)."""
    import importlib.util

    from vad.cli import main

    pytest.importorskip("onnxscript", reason="the exporter needs onnx and onnxscript (pip install -e '.[deploy]')")
    run = helpers.copy_run(trained, tmp_path_factory.mktemp("exported") / "run", scene)
    formats = ["onnx", "openvino"] if importlib.util.find_spec("openvino") else ["onnx"]
    assert main(["export", "--run", str(run), "--format", *formats]) == 0
    return run


@pytest.fixture(scope="session")
def live_run(trained: Path, scene: Path, tmp_path_factory) -> Path:
    """The tiny trained motion model in a run folder of its own (config saved), scored with torch: for the live
    tests (read-only: they write elsewhere)."""
    from dataclasses import replace

    from vad.offline.pipeline import save_config, with_data

    folder = tmp_path_factory.mktemp("live") / "run"
    folder.mkdir()
    (folder / "model.pt").write_bytes((trained / "model.pt").read_bytes())
    cfg = with_data(TINY, scene, "shanghaitech")
    save_config(replace(cfg, score=replace(cfg.score, backend="torch")), folder / "config.yaml")
    return folder

