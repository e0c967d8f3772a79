"""The fast scoring path: the GPU-shaped data flow (undecoded JPEG bytes and uint8 frames transformed by the
Scorer), bf16 autocast against float32, the uint8 resize, and training with several decode workers."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

import vad.device
from tests.helpers import SMALL, TINY
from vad.config import ModelConfig, ScoreConfig
from vad.device import amp_dtype, cpu_has_native_bf16
from vad.io import read_dataset
from vad.io.dataset import FrameStream, FrameTransform
from vad.models import build_model, depthwise_in_float32
from vad.models.backbones import Pyramid
from vad.offline.train import train
from vad.runtime.batches import score_clips, stream
from vad.runtime.checkpoint import load_model
from vad.runtime.scorer import Scorer

FP32 = replace(TINY.score, batch_size=8, amp="off")  # float32 scoring: paths compared exactly


def _scores(scorer: Scorer, clips, out: Path) -> np.ndarray:
    res = score_clips(scorer, clips, out, progress=False)
    return np.concatenate([res[c.name] for c in clips])


def _appearance_only(model):
    """The same teacher and student as a motion model, without its motion branch and speed cue (plain STPM)."""
    plain = build_model(ModelConfig(input_height=96, teacher_weights="random", motion=False, speed=False))
    own = plain.state_dict()  # the fused map's per-position statistics stay behind (their shapes differ)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in own and v.shape == own[k].shape},
                          strict=False)
    return plain.eval()


@pytest.mark.parametrize("motion", [True, False])
def test_device_side_path_gives_the_cpu_path_scores(scene: Path, trained: Path, tmp_path: Path, motion: bool) -> None:
    """The data flow used on CUDA (workers send JPEG bytes / uint8 frames, the Scorer decodes, resizes and
    normalises on its device), run here on the CPU, scores every frame exactly as the CPU path does; a motion model
    too (it scores a stream of single frames, its past kept by the scorer)."""
    model, ckpt = load_model(trained / "model.pt")
    model = model if motion else _appearance_only(model)
    clips = read_dataset("shanghaitech", scene, "test")  # JPEG folders
    cpu = _scores(Scorer(model, ckpt, FP32, "cpu"), clips, tmp_path / "cpu")
    dev = Scorer(model, ckpt, FP32, "cpu")
    dev.on_device = True
    batch = next(iter(stream(dev, clips)))
    assert "jpeg" in batch and "frames" not in batch and batch["jpeg"][0].dtype == torch.uint8
    np.testing.assert_array_equal(_scores(dev, clips, tmp_path / "dev"), cpu)
    videos = read_dataset("shanghaitech", scene, "train")[:1]  # uint8 frames from PyAV
    assert next(iter(stream(dev, videos)))["frames"].dtype == torch.uint8
    np.testing.assert_array_equal(_scores(dev, videos, tmp_path / "dev_v"),
                                  _scores(Scorer(model, ckpt, FP32, "cpu"), videos, tmp_path / "cpu_v"))


def test_bf16_scores_keep_the_fp32_ranking(scene: Path, trained: Path, tmp_path: Path) -> None:
    """The stated tolerance of bf16 autocast (the CUDA default, and the CPU default with AMX): Spearman rank
    correlation with float32 >= 0.99, frame AUC within 0.01, every score within 5 % of the largest."""
    model, ckpt = load_model(trained / "model.pt")
    clips = read_dataset("shanghaitech", scene, "test")
    y = np.concatenate([c.labels for c in clips]).astype(bool)
    fp32 = _scores(Scorer(model, ckpt, FP32, "cpu"), clips, tmp_path / "fp32")
    bf16 = _scores(Scorer(model, ckpt, replace(FP32, amp="bf16"), "cpu"), clips, tmp_path / "bf16")
    assert not np.array_equal(fp32, bf16)  # bf16 did run
    assert spearmanr(fp32, bf16).statistic >= 0.99
    assert abs(roc_auc_score(y, fp32) - roc_auc_score(y, bf16)) <= 0.01
    assert np.abs(fp32 - bf16).max() <= 0.05 * np.abs(fp32).max()


@pytest.mark.parametrize("native_bf16", [False, True], ids=["no_amx", "amx"])
def test_amp_auto_per_device(monkeypatch, native_bf16: bool) -> None:
    """``auto``: training and scoring on a CPU use bf16 exactly where it is native (AMX); CUDA uses bf16 where
    supported. Both sides of each choice, whatever this machine has."""
    monkeypatch.setattr(vad.device, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: native_bf16)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    bf16_if_native = torch.bfloat16 if native_bf16 else None
    assert amp_dtype("auto", cpu) == bf16_if_native
    assert amp_dtype("auto", cuda) == bf16_if_native
    assert amp_dtype("off", cuda) is None
    assert amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) == torch.bfloat16
    assert amp_dtype("fp16", cpu) == torch.float16
    with pytest.raises(ValueError, match="unknown amp setting 'half'"):
        amp_dtype("half", cpu)
    model = build_model(ModelConfig(teacher_weights="random", motion=False))
    ckpt = {"input_size": [64, 64], "normalization": "lite0"}
    assert Scorer(model, ckpt, ScoreConfig(amp="auto"), "cpu").runner.dtype == bf16_if_native  # the scoring default
    assert Scorer(model, ckpt, ScoreConfig(amp="off"), "cpu").runner.dtype is None


@pytest.mark.parametrize(("cpuinfo", "native"), [("flags : fpu avx512f avx512_bf16", False),
                                                 ("flags : fpu avx512f amx_bf16 amx_tile", True),
                                                 (None, False)])
def test_native_bf16_means_amx(tmp_path: Path, monkeypatch, cpuinfo: str | None, native: bool) -> None:
    """AVX-512 BF16 alone does not make bf16 faster than float32 (conversions only); AMX does. No /proc/cpuinfo
    (not Linux): float32."""
    fake = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        fake.write_text(cpuinfo + "\n")
    monkeypatch.setattr(vad.device, "Path", lambda _: fake)
    assert cpu_has_native_bf16() is native


def test_uint8_resize_is_within_one_grey_level_of_float() -> None:
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 3, 60, 100), dtype=torch.uint8, generator=g)
    t = FrameTransform(size=(32, 48), normalization="none")
    fast = t(frames)  # CPU: uint8 resize
    ref = torch.nn.functional.interpolate(frames.float() / 255, size=(32, 48), mode="bilinear", antialias=True)
    assert fast.shape == (2, 3, 32, 48) and fast.dtype == torch.float32
    assert float((fast - ref).abs().max()) <= 1 / 255 + 1e-6


def test_stream_refuses_untransformed_shuffle_and_bytes_with_transform(scene: Path) -> None:
    clips = read_dataset("shanghaitech", scene, "train")
    with pytest.raises(ValueError, match="shuffled FrameStream needs a transform"):
        FrameStream(clips, None, shuffle=True)
    with pytest.raises(ValueError, match="jpeg_bytes passes undecoded frames on"):
        FrameStream(clips, FrameTransform(), jpeg_bytes=True)


def test_compile_refused_for_mkd() -> None:
    model = build_model(ModelConfig(method="mkd"))
    ckpt = {"input_size": [64, 64], "normalization": "lite0"}
    with pytest.raises(ValueError, match="score.compile does not support mkd"):
        Scorer(model, ckpt, ScoreConfig(compile=True), "cpu")


def test_training_with_decode_workers_keeps_the_schedule(scene: Path, tmp_path: Path, monkeypatch) -> None:
    """With several decode workers each worker's last batch may be partial; every epoch still takes exactly
    ceil(frames / batch) steps, so the one-cycle schedule is never overrun. (In bf16 on the CPU: its depthwise
    convolutions are kept in float32, its teacher is folded, and its model.pt loads into a plain model.)"""
    import vad.offline.session

    patched, folded = [], []
    monkeypatch.setattr(vad.offline.session, "depthwise_in_float32", lambda m: patched.append(depthwise_in_float32(m)))
    fold = Pyramid.fold
    monkeypatch.setattr(Pyramid, "fold", lambda self: folded.append(self) or fold(self))
    cfg = replace(SMALL, train=replace(SMALL.train, epochs=3, num_workers=2, batch_size=5, position_stats=False,
                                       amp="bf16"))
    train(read_dataset("shanghaitech", scene, "train"), cfg, tmp_path, device="cpu", progress=False)
    assert len(patched) == 1 and patched[0] > 0 and len(folded) == 1  # the frozen teacher folded in bf16 too
    assert isinstance(load_model(tmp_path / "model.pt")[0], torch.nn.Module)
    log = [json.loads(ln) for ln in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and log[-1]["lr"] < log[0]["lr"]
    assert all(r["frames_per_s"] > 0 and r["processes"] == 1 for r in log)


def test_depthwise_convolutions_train_in_float32_under_bf16_autocast() -> None:
    """CPU bf16 training: the depthwise convolutions that train run in float32 (their bf16 backward is the slow
    one), every other convolution in bf16; frozen ones and forwards without gradients stay bf16. The state dict is
    a plain model's, a deep copy runs its own weights, and the gradients match float32's."""
    import copy

    model = build_model(ModelConfig(teacher_weights="random", motion=False, input_height=64))
    plain = copy.deepcopy(model)
    n = depthwise_in_float32(model)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    depthwise = {name for name, m in convs.items() if m.groups > 1}
    assert n == len(depthwise) > 0 and any(name.startswith("student") for name in depthwise)
    assert model.state_dict().keys() == plain.state_dict().keys()
    seen: dict[str, torch.dtype] = {}
    for name, m in convs.items():
        m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, out.dtype))
    x = torch.randn(2, 3, 64, 96)

    def student_out(net, grad: bool):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            return net.student(x)

    student_out(model, grad=True)
    student_dw = {n for n in depthwise if n.startswith("student")}
    assert student_dw and all(seen[n] == torch.float32 for n in student_dw)
    assert all(seen[n] == torch.bfloat16 for n in seen if n.startswith("student") and n not in depthwise)
    seen.clear()
    student_out(model, grad=False)  # validation, scoring: bf16 throughout
    assert seen and all(v == torch.bfloat16 for v in seen.values())
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the frozen teacher
        model.teacher(x)
    assert seen and all(v == torch.bfloat16 for n, v in seen.items() if n in depthwise)
    twin = copy.deepcopy(model)  # the copy's forward is bound to the copy's own weights
    with torch.no_grad():
        next(m for n, m in twin.named_modules() if n in student_dw).weight.zero_()
    out_model, out_twin = (torch.cat([v.flatten() for v in student_out(net, True).values()]) for net in (model, twin))
    assert not torch.allclose(out_model, out_twin)
    ref = plain.student(x)  # float32 reference: the deepest one's gradient (the fewest bf16 layers above it)
    sum(v.float().square().mean() for v in ref.values()).backward()  # within bf16's error of float32's
    sum(v.float().square().mean() for v in student_out(model, True).values()).backward()
    name = [n for n in convs if n in student_dw][-1].removeprefix("student.")
    g_ref, g = (dict(net.student.named_modules())[name].weight.grad for net in (plain, model))
    assert g.dtype == torch.float32 and torch.nn.functional.cosine_similarity(g.flatten(), g_ref.flatten(), 0) > 0.9


@pytest.mark.slow
def test_compiled_scoring_matches_eager(scene: Path, trained: Path, tmp_path: Path) -> None:
    """score.compile=true (torch.compile, padded static batches) gives the eager scores (float32, CPU)."""
    model, ckpt = load_model(trained / "model.pt")
    clips = read_dataset("shanghaitech", scene, "test")
    eager = _scores(Scorer(model, ckpt, FP32, "cpu"), clips, tmp_path / "eager")
    torch._dynamo.reset()
    compiled = Scorer(model, ckpt, replace(FP32, compile=True, batch_size=6), "cpu")  # 16 = 6 + 6 + 4 (padded)
    assert compiled.runner.compiled
    np.testing.assert_allclose(_scores(compiled, clips, tmp_path / "compiled"), eager, rtol=1e-4,
                               atol=1e-5 * float(np.abs(eager).max()))
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] == 1  # the padded batches reuse the full batches' graph


def test_compile_by_default_only_for_long_jobs(trained: Path) -> None:
    from vad.runtime.scorer import COMPILE_MIN_FRAMES

    model, ckpt = load_model(trained / "model.pt")
    scorer = Scorer(model, ckpt, FP32, "cpu")  # compile=None: decided per job
    assert not scorer.runner.compiled and not scorer.runner.compiles(COMPILE_MIN_FRAMES - 1)
    has_cc = any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))
    assert scorer.runner.compiles(COMPILE_MIN_FRAMES) == has_cc  # a long job compiles where inductor can
    assert not Scorer(model, ckpt, replace(FP32, compile=False), "cpu").runner.compiles(10**6)
    asked = Scorer(model, ckpt, replace(FP32, compile=True), "cpu")
    assert asked.runner.compiled and asked.runner.compiles(1)  # asked for: any job
