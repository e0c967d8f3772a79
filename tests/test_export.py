"""Exported models score as the torch model does: ONNX Runtime and OpenVINO (precision pinned to f32) within 1e-3
of torch and the same frame AUC to 3 decimals on a trained tiny model; what scoring needs travels with the export;
without the runtimes installed, a clear error says what to install."""

from __future__ import annotations

import copy
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import TINY, copy_run, frame_auc
from vad.cli import main
from vad.config import ModelConfig
from vad.errors import UsageError
from vad.io import read_dataset
from vad.models import build_model
from vad.runs import RunFolder, read_manifest
from vad.runtime.batches import score_clips
from vad.runtime.checkpoint import load_model
from vad.runtime.export import EXPORT_MIN_FRAMES, SPEED_FILE, Runtime, choose_backend, export_model, machine
from vad.runtime.reference import NormalReference
from vad.runtime.scorer import Scorer

FP32 = replace(TINY.score, amp="off", compile=False)
RUNTIMES = [pytest.param(b, marks=pytest.mark.skipif(importlib.util.find_spec(b) is None,
                                                     reason=f"{b} is not installed (pip install -e '.[deploy]')"))
            for b in ("onnxruntime", "openvino")]


@pytest.fixture(scope="module")
def motion_export(trained: Path, exported_run: Path) -> tuple[Path, Path]:
    """The tiny trained motion model and its export (ONNX, and OpenVINO IR when OpenVINO is installed)."""
    (folder,) = list((exported_run / "export").iterdir())
    return trained, folder


@pytest.mark.parametrize("backend", RUNTIMES)
def test_an_exported_motion_model_scores_as_torch(scene: Path, motion_export, tmp_path: Path, backend: str) -> None:
    trained, folder = motion_export
    model, ckpt = load_model(trained / "model.pt")
    clips = read_dataset("shanghaitech", scene, "test")
    reference = score_clips(Scorer(model, ckpt, FP32, "cpu"), clips, tmp_path / "torch", progress=False)
    runtime = Scorer(model, ckpt, FP32, "cpu")
    runtime.use(Runtime(backend, folder))
    got = score_clips(runtime, clips, tmp_path / backend, progress=False)
    scale = max(np.abs(v).max() for v in reference.values())
    for c in clips:  # within 1e-3 of torch, relative to the largest score
        np.testing.assert_allclose(got[c.name], reference[c.name], rtol=0, atol=1e-3 * scale)
        maps_t = np.load(RunFolder(tmp_path / "torch").maps(c.name)).astype(np.float32)
        maps_r = np.load(RunFolder(tmp_path / backend).maps(c.name)).astype(np.float32)
        np.testing.assert_allclose(maps_r, maps_t, rtol=0, atol=2e-3 * scale)
    assert round(frame_auc(got, clips), 3) == round(frame_auc(reference, clips), 3)
    assert frame_auc(got, clips) > 0.9  # the trained model separates the scene's anomaly, exported too


@pytest.fixture(scope="module")
def frame_export(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A model without a past (STPM alone) and its export."""
    pytest.importorskip("onnxscript", reason="the exporter needs onnxscript")
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_height=64, teacher_weights="random", motion=False)).eval()
    ckpt = {"input_size": [64, 96], "normalization": "lite0"}
    folder = tmp_path_factory.mktemp("frame") / "x"
    return model, export_model(copy.deepcopy(model), ckpt, NormalReference(np.arange(10.0)), folder)


@pytest.mark.parametrize("backend", RUNTIMES)
def test_an_exported_frame_model_scores_as_torch(backend: str, frame_export) -> None:
    """A model without a past (STPM alone; RSTPM alike) exports its frame function."""
    model, folder = frame_export
    x = torch.randn(5, 3, 64, 96)
    with torch.no_grad():
        scores, amap = model.score_and_map(x)
    got_scores, got_map = Runtime(backend, folder).forward(x)
    torch.testing.assert_close(got_scores, scores, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(got_map, amap, rtol=1e-3, atol=1e-4)


def test_export_writes_what_scoring_needs_and_score_uses_it(exported_run: Path, scene: Path, tmp_path: Path,
                                                            capsys) -> None:
    """What `vad export` wrote (the shared export fixture ran it on the trained model); exporting again reuses it;
    scoring with torch and with ONNX Runtime gives the same frame AUC."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[deploy]')")
    run = copy_run(exported_run, tmp_path / "run", scene)
    formats = ["onnx", "openvino"] if importlib.util.find_spec("openvino") else ["onnx"]
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--format", *formats]) == 0
    assert "exporting" not in capsys.readouterr().out  # made for this model and these settings: reused
    (folder,) = list((run / "export").iterdir())
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["input_size"] == list(load_model(run / "model.pt")[1]["input_size"]) and meta["context"] == 2
    assert meta["normalization"] == "lite0" and meta["scoring"]["fusion"] == "max"
    assert len(np.load(folder / "reference.npz")["scores"]) > 0
    assert (folder / "model.xml").is_file() == ("openvino" in formats)
    assert main(["score", "--run", str(run), "--backend", "torch"]) == 0
    assert main(["evaluate", "--run", str(run)]) == 0
    auc_torch = json.loads(RunFolder(run).metrics.read_text())["frame_auc_micro_raw"]
    capsys.readouterr()
    assert main(["score", "--run", str(run), "--backend", "onnxruntime", "--overwrite"]) == 0
    assert "exporting" not in capsys.readouterr().out  # the export made above is reused
    assert {r.backend for r in read_manifest(RunFolder(run)).values()} == {"onnxruntime"}
    assert main(["evaluate", "--run", str(run)]) == 0
    assert round(json.loads(RunFolder(run).metrics.read_text())["frame_auc_micro_raw"], 3) == round(auc_torch, 3)


def test_auto_runs_the_backend_measured_fastest_on_this_machine(exported_run: Path, scene: Path, tmp_path: Path,
                                                               monkeypatch, capsys) -> None:
    """`auto` measures torch and each installed runtime once per machine on one batch (kept in the export's
    speed.json) and scores with the fastest; measured before, it is not measured again and the recorded fastest is
    the one used, torch included."""
    have = [b for b in ("onnxruntime", "openvino") if importlib.util.find_spec(b)]
    if not have:
        pytest.skip("no runtime installed (pip install -e '.[deploy]')")
    run = copy_run(exported_run, tmp_path / "run", scene)
    assert main(["export", "--run", str(run)]) == 0
    (folder,) = list((run / "export").iterdir())
    capsys.readouterr()
    assert main(["score", "--run", str(run), "--backend", "auto"]) == 0
    (key, speeds), = json.loads((folder / SPEED_FILE).read_text()).items()
    assert key.startswith(machine()) and f"batch {TINY.score.batch_size}" in key
    assert set(speeds) == {*have, "torch"} and all(v > 0 for v in speeds.values())
    fastest = max(speeds, key=speeds.get)
    assert f"scoring with {fastest}" in capsys.readouterr().out
    assert {r.backend for r in read_manifest(RunFolder(run)).values()} == {fastest}
    monkeypatch.setattr("vad.runtime.scorer.Scorer.frames_per_second", lambda *a: pytest.fail("measured again"))
    for recorded in (*have, "torch"):  # each recorded as the fastest in turn: used, nothing measured
        (folder / SPEED_FILE).write_text(json.dumps({key: {**speeds, recorded: 2 * max(speeds.values())}}))
        assert main(["score", "--run", str(run), "--backend", "auto", "--overwrite"]) == 0
        assert {r.backend for r in read_manifest(RunFolder(run)).values()} == {recorded}
        assert "measured on this machine" not in capsys.readouterr().out


def test_without_the_runtimes_a_clear_error_says_what_to_install(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("onnxruntime", "openvino") else real(name, *a))
    model = build_model(ModelConfig(input_height=64, teacher_weights="random"))
    cpu = torch.device("cpu")
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(UsageError, match=r'package, which is not installed: pip install -e "\.\[deploy\]"'):
            choose_backend(backend, model, cpu, 10**6)
    assert choose_backend("auto", model, cpu, 10**6) == "torch"


def test_auto_picks_a_runtime_only_where_it_pays(monkeypatch) -> None:
    monkeypatch.setattr("vad.runtime.export.installed", lambda b: True)
    cpu = torch.device("cpu")
    stpm = build_model(ModelConfig(input_height=64, teacher_weights="random"))
    mkd = build_model(ModelConfig(input_height=64, teacher_weights="random", method="mkd"))
    assert choose_backend("auto", stpm, cpu, EXPORT_MIN_FRAMES) == "onnxruntime"
    assert choose_backend("auto", stpm, cpu, None) == "onnxruntime"  # a live stream
    assert choose_backend("auto", stpm, cpu, 10) == "torch"  # exporting costs more than it saves
    assert choose_backend("auto", stpm, cpu, 10, have_export=True) == "onnxruntime"
    assert choose_backend("auto", mkd, cpu, 10**6) == "torch"
    assert choose_backend("auto", stpm, torch.device("meta"), 10**6) == "torch"  # not a CPU
    with pytest.raises(UsageError, match="input gradients"):
        choose_backend("openvino", mkd, cpu, 10**6)
