from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import helpers  # noqa: E402

from vad.config import ModelConfig, RunConfig, ScoreConfig, TrainConfig  # noqa: E402

# The trained-model tests' config: the scene's 48x64 frames upsampled to 96x128 (the stride-16 level needs room),
# six epochs (RSTPM: four more for its discriminative stage), enough to separate the scene's pasted anomaly.
TINY = RunConfig(
    model=ModelConfig(input_height=96),
    # object_shift=0: the scene's anomaly is partly *where* it is (rows no normal object reaches), which object
    # shifts declare normal by design; tests/test_augment.py trains with them on a scene where it is *what*
    train=TrainConfig(epochs=6, disc_epochs=4, batch_size=8, lr=3e-3, seed=0, object_shift=0.0),
    # float32 scoring, also where the CPU has AMX (whose default is bf16): the normal reference stored at training
    # is then the same on every machine, and tests that rescore "as trained" compare like with like
    score=ScoreConfig(batch_size=16, amp="off"),
)
SMALL = replace(TINY, model=replace(TINY.model, input_height=48))  # for tests of mechanics, not accuracy
AMPS = ("off", "bf16")  # scoring runs in float32, or bf16 where the CPU has AMX (and on CUDA): tests cover both


def tiny(method: str) -> RunConfig:
    return replace(TINY, model=replace(TINY.model, method=method))


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
    from vad.train import train

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


def frame_auc(scores: dict[str, np.ndarray], clips) -> float:
    """Frame AUC of ``scores`` over ``clips``' labels (all frames pooled)."""
    from sklearn.metrics import roc_auc_score

    y = np.concatenate([c.labels for c in clips]).astype(bool)
    return float(roc_auc_score(y, np.concatenate([scores[c.name] for c in clips])))
