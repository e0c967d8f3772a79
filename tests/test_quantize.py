"""Lower-precision copies (vad.runtime.quantize): int8 calibrated on training frames only, never a test frame nor the
hold-out; each checked on the normal hold-out against the f32 export; a broken one fails its check and is never used (a
backend named for it is refused, auto does not measure it); one that passed scores with its own normal reference and
still separates the scene's anomaly."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY, copy_run, frame_auc
from vad.cli import main
from vad.io import read_dataset
from vad.offline.pipeline import save_config, with_data
from vad.runs import RunFolder, read_manifest
from vad.runtime.export import SPEED_FILE, machine
from vad.runtime.quantize import CHECK_FILE, candidates, read_check
from vad.runtime.reference import holdout, spread_runs

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None
                                 or importlib.util.find_spec("onnxscript") is None,
                                 reason="needs onnxruntime and the exporter (pip install -e '.[deploy]')")]


def _run_without_test_split(exported_run: Path, scene: Path, tmp_path: Path) -> Path:
    """A copy of the exported run whose data root holds the training split only: making a copy cannot read a test
    frame."""
    data = tmp_path / "data"
    shutil.copytree(scene / "training", data / "training")
    return copy_run(exported_run, tmp_path / "run", data)


def test_calibration_runs_lie_in_the_training_frames_and_spread_over_them() -> None:
    train, val = holdout([type("C", (), {"name": n, "num_frames": k})() for n, k in (("a", 100), ("b", 300))], 0.2)
    runs = spread_runs(train, 96, 8)  # how a copy's calibration frames are drawn (make_variant)
    assert sum(b - a for _, (a, b) in runs) == pytest.approx(96, abs=16)
    for clip, (a, b) in runs:
        lo, hi = train[clip]
        assert lo <= a < b <= hi and b - a == 8  # training frames, consecutive (the motion branch reads a past)
        assert b <= val[clip][0]  # never the hold-out, which checks the copy
    starts = sorted(a for clip, (a, _) in runs if clip == "b")
    assert len(starts) >= 3 and starts[0] == 0 and starts[-1] == train["b"][1] - 8  # from first to last frames


def test_an_int8_copy_made_without_test_frames_checks_on_the_hold_out(exported_run: Path, scene: Path, tmp_path: Path,
                                                                      capsys) -> None:
    """Made with the test split absent (so no test frame can be read), checked on the hold-out, with its own
    reference; scoring with it does what its check says: scores (and still separates the anomaly), or is refused."""
    run = _run_without_test_split(exported_run, scene, tmp_path)
    assert main(["export", "--run", str(run), "--int8"]) == 0
    out = capsys.readouterr().out
    (folder,) = [p for p in (run / "export").iterdir() if p.is_dir()]
    check = read_check(folder / "onnxruntime-int8")
    assert check is not None and "onnxruntime-int8: rank correlation with f32" in out
    assert -1 <= check.maps <= 1 and -1 <= check.scores <= 1 and 0 <= check.flips <= check.frames
    meta = json.loads((folder / "onnxruntime-int8" / "metadata.json").read_text())
    assert meta["precision"] == "int8" and meta["variant"] == "onnxruntime-int8"
    assert any(n.op_type == "QuantizeLinear" for n in _graph(folder / "onnxruntime-int8" / "model.onnx").node)
    ref = np.load(folder / "onnxruntime-int8" / "reference.npz")
    assert 2 * len(ref["scores"]) == check.frames  # its own reference, fitted on the hold-out checked (twice)
    base = np.load(folder / "reference.npz")
    assert not np.array_equal(ref["state_branch_loc"], base["state_branch_loc"])  # refitted to its own scores
    save_config(with_data(TINY, scene, "shanghaitech"), run / "config.yaml")  # the test split, given now
    if not check.passed:
        assert main(["score", "--run", str(run), "--backend", "onnxruntime-int8"]) != 0
        assert "did not pass its check" in capsys.readouterr().err
        return
    _scores_with_its_own_reference(run, scene, folder, "onnxruntime-int8")


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_a_bf16_copy_passes_its_check_and_separates_the_anomaly(exported_run: Path, scene: Path, tmp_path: Path
                                                                 ) -> None:
    from vad.runtime.quantize import native_bf16

    if not native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16, AMX)")
    run = _run_without_test_split(exported_run, scene, tmp_path)
    assert main(["export", "--run", str(run), "--format", "openvino", "--bf16"]) == 0
    (folder,) = [p for p in (run / "export").iterdir() if p.is_dir()]
    check = read_check(folder / "openvino-bf16")
    assert check.passed and check.maps > 0.98, check.line()
    save_config(with_data(TINY, scene, "shanghaitech"), run / "config.yaml")
    _scores_with_its_own_reference(run, scene, folder, "openvino-bf16")


def _graph(path: Path):
    import onnx

    return onnx.load(str(path)).graph


def _scores_with_its_own_reference(run: Path, scene: Path, folder: Path, variant: str) -> None:
    assert main(["score", "--run", str(run), "--backend", variant]) == 0
    manifest = read_manifest(RunFolder(run))
    assert {r.backend for r in manifest.values()} == {variant}
    assert {r.reference for r in manifest.values()} == {f"{folder.name}-{variant}"}
    clips = read_dataset("shanghaitech", scene, "test")
    assert frame_auc({c.name: np.load(RunFolder(run).scores(c.name)) for c in clips}, clips) > 0.9


OPENVINO_COPIES = [pytest.param("openvino-int8", marks=pytest.mark.skipif(
                       importlib.util.find_spec("nncf") is None, reason="nncf is not installed")),
                   "openvino-bf16"]


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
@pytest.mark.parametrize("variant", OPENVINO_COPIES)
def test_a_broken_copy_fails_its_check_and_is_never_used(exported_run: Path, scene: Path, tmp_path: Path, monkeypatch,
                                                         capsys, variant: str) -> None:
    """A corrupted scale (one convolution's weights, as the copy dequantizes them, 30x too large on every other output
    channel) fails the check, for int8 also with the compared layers kept in f32; the copy is kept with its check,
    refused by name, and auto does not measure it even when recorded as by far the fastest."""
    import openvino as ov
    import openvino.opset13 as ops

    import vad.runtime.quantize

    if variant == "openvino-bf16" and not vad.runtime.quantize.native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16, AMX)")
    real = vad.runtime.quantize._build

    def broken(variant, src, dst, feeds, ignored):
        real(variant, src, dst, feeds, ignored)
        model = ov.Core().read_model(str(dst / "model.xml"))
        convs = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
        conv = convs[len(convs) // 2]
        weights = conv.input_value(1)
        scale = np.ones((weights.get_partial_shape()[0].get_length(), 1, 1, 1), np.float32)
        scale[::2] = 30  # every other output channel: a uniform scale would vanish in channel-normalised features
        conv.input(1).replace_source_output(ops.multiply(weights, ops.constant(scale)).output(0))
        ov.save_model(model, str(dst / "broken.xml"), compress_to_fp16=False)
        del model
        for ext in (".xml", ".bin"):
            (dst / f"broken{ext}").replace(dst / f"model{ext}")

    monkeypatch.setattr(vad.runtime.quantize, "_build", broken)
    run = _run_without_test_split(exported_run, scene, tmp_path)
    flag = "--int8" if variant.endswith("int8") else "--bf16"
    assert main(["export", "--run", str(run), "--format", "openvino", flag]) == 0
    (folder,) = [p for p in (run / "export").iterdir() if p.is_dir()]
    check = read_check(folder / variant)
    assert check is not None and not check.passed, check.line()
    assert bool(check.ignored) == (variant == "openvino-int8")  # int8: the fallback was tried too
    assert json.loads((folder / variant / CHECK_FILE).read_text())["passed"] is False
    save_config(with_data(TINY, scene, "shanghaitech"), run / "config.yaml")
    capsys.readouterr()
    assert main(["score", "--run", str(run), "--backend", variant]) != 0  # refused by name, before scoring
    assert "did not pass its check" in capsys.readouterr().err
    assert not (run / "scores").exists()
    digest = json.loads((folder / "metadata.json").read_text())["model"]
    assert variant not in candidates(folder, digest)
    key = f"{machine()}; batch {TINY.score.batch_size}, torch float32"
    (folder / SPEED_FILE).write_text(json.dumps({key: {**dict.fromkeys(candidates(folder, digest), 1.0),
                                                       variant: 1e6}}))
    assert main(["score", "--run", str(run), "--backend", "auto"]) == 0
    assert variant not in {r.backend for r in read_manifest(RunFolder(run)).values()}


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
                    reason="needs openvino and nncf")
def test_openvino_int8_ranges_reach_the_brightest_calibration_batch(exported_run: Path, tmp_path: Path) -> None:
    """NNCF's default range for an activation is the mean of each calibration batch's minimum and maximum, which
    clips what only some batches reach (the pseudo-anomalies' headroom: docs/speed.md); the copy's ranges are the
    calibration's extremes, as ONNX Runtime's MinMax. One batch of frames far brighter than the others: the
    quantizer of the frames reaches its maximum."""
    import openvino as ov

    from vad.runtime.quantize import _build

    (folder,) = [p for p in (exported_run / "export").iterdir() if p.is_dir()]
    inputs = ov.Core().read_model(str(folder / "model.xml")).inputs
    rng = np.random.default_rng(0)

    def feed(i: int, gain: float) -> dict[str, np.ndarray]:
        out = {}
        for port in inputs:
            shape = [d.get_length() if d.is_static else 2 for d in port.get_partial_shape()]
            name = port.get_any_name()
            out[name] = (np.full(shape, i, np.int64) if name == "index"
                         else rng.uniform(-1, 1, shape).astype(np.float32))
        out["frames"] *= gain
        return out

    feeds = [feed(i, 1.0) for i in range(8)] + [feed(8, 6.0)]
    top = max(float(f["frames"].max()) for f in feeds)
    _build("openvino-int8", folder, tmp_path / "copy", feeds, [])
    model = ov.Core().read_model(str(tmp_path / "copy" / "model.xml"))
    on_frames = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
                 and op.input_value(0).get_node().get_friendly_name() == "frames"]
    assert on_frames, "no quantizer on the frames input"
    for fq in on_frames:
        high = float(np.max(fq.input_value(2).get_node().get_data()))
        assert high >= 0.95 * top, (high, top)  # the mean of the batches' maxima would be about 1.6 here
