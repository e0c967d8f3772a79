"""Preparing writes, opening only reads: :func:`vad.runtime.open.open_model` on a run that was not prepared for its
settings says "prepare first" and leaves the run folder as it was; after :func:`vad.runtime.prepare.prepare_model` it
scores as the prepared model does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY, copy_run
from vad.errors import VadError
from vad.io import read_dataset
from vad.offline.pipeline import with_data
from vad.runtime.batches import score_clips
from vad.runtime.open import NotPrepared, open_model
from vad.runtime.prepare import prepare_model


def _listing(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` with its modification time (ns)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def _cfg(scene: Path, **model):
    cfg = with_data(TINY, scene, "shanghaitech")
    return replace(cfg, model=replace(cfg.model, **model), score=replace(cfg.score, backend="torch", amp="off"))


@pytest.mark.parametrize("model", [{}, {"fusion": "sum"}], ids=["trained settings", "fusion=sum"])
def test_open_without_its_reference_says_prepare_first_and_writes_nothing(trained: Path, scene: Path,
                                                                           tmp_path: Path, model: dict) -> None:
    run = copy_run(trained, tmp_path / "run", scene)
    before = _listing(run)
    with pytest.raises(NotPrepared, match="prepare first") as err:
        open_model(run, _cfg(scene, **model), "cpu")
    assert isinstance(err.value, VadError) and "\n" not in str(err.value)  # the CLI's one-line error
    assert _listing(run) == before


def test_open_without_the_export_its_backend_needs_says_prepare_first(trained: Path, scene: Path,
                                                                      tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    run = copy_run(trained, tmp_path / "run", scene)
    cfg = _cfg(scene)
    prepare_model(run, cfg, "cpu")  # the reference alone (backend torch)
    before = _listing(run)
    with pytest.raises(NotPrepared, match="prepare first"):
        open_model(run, cfg, "cpu", backend="onnxruntime")
    assert _listing(run) == before


@pytest.mark.parametrize("model", [{}, {"fusion": "sum"}], ids=["trained settings", "fusion=sum"])
def test_open_after_prepare_scores_as_the_prepared_model(trained: Path, scene: Path, tmp_path: Path,
                                                         model: dict) -> None:
    run = copy_run(trained, tmp_path / "run", scene)
    cfg = _cfg(scene, **model)
    prepared = prepare_model(run, cfg, "cpu")
    written = _listing(run)
    opened = open_model(run, cfg, "cpu")
    assert _listing(run) == written  # opening wrote nothing
    assert (opened.reference_name, opened.backend, opened.key) == (prepared.reference_name, "torch", prepared.key)
    np.testing.assert_allclose(opened.reference.scores, prepared.reference.scores, rtol=1e-6)
    clips = read_dataset("shanghaitech", scene, "test")
    want = score_clips(prepared.scorer, clips, tmp_path / "prepared", progress=False)
    got = score_clips(opened.scorer, clips, tmp_path / "opened", progress=False)
    for c in clips:
        np.testing.assert_array_equal(got[c.name], want[c.name])
