#!/usr/bin/env python3
"""Throughput (frames/s) of vad's scoring and training paths against a naive baseline, side by side in one run.

By default the product's default model: STPM with its motion branch on the EfficientNet-Lite0 teacher (pretrained
weights), at the campus input size (768x576 frames -> 256x336). Cases, each for the baseline, the torch fast path
(the code ``vad score`` / ``vad train`` run) and every installed runtime (``vad export``: ONNX Runtime, OpenVINO):

- model only: normalised frames already in memory -> scores and maps;
- e2e JPEG: a folder of JPEG frames -> decode -> resize/normalise -> model -> per-frame scores written to disk
  (fast: :func:`vad.runtime.batches.score_clips`, the product's path);
- e2e video: the same frames as an H.264 MP4;
- decode: decoding alone (JPEG folder, video), to show whether decoding limits the end-to-end rate;
- train: training steps (decode, shuffle, forward, backward, optimiser) at the product's input size; and the same
  steps on samples held in memory (``train.cache``: decoded once, the teacher's features kept).

The baseline is written the way reference implementations are: one frame at a time, Pillow decoding and
resizing per frame, float32, NCHW, a host synchronisation per frame or step; a motion model gets each frame's
window of frames, the teacher run on all of them. The fast path scores a stream: the teacher once per frame, the
memory layout measured. Every case runs once to warm up (file cache, autotuning, torch.compile), then ``--repeat``
times with the device synchronised before the clock stops; the median is reported. The frames are synthetic (a
textured scene, moving blobs, sensor noise), made in a temporary folder. The last line is one JSON object with
``e2e_fps``, ``baseline_e2e_fps``, ``speedup_e2e`` and ``e2e_fps_<backend>`` for each installed runtime.

    python benchmarks/throughput.py                                  # the default model on the CPU, ~5 minutes
    python benchmarks/throughput.py --backbone resnet18 --no-motion --size 256 --width 856 --height 480
    python benchmarks/throughput.py --device cuda --compile          # GPU defaults: large batches and counts
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vad.config import ModelConfig, ScoreConfig
from vad.device import amp_dtype, autocast, resolve_device, to_device
from vad.io import iter_frames
from vad.io.dataset import NORMALIZATIONS, FrameStream, FrameTransform, make_loader
from vad.io.records import Clip, frames_clip
from vad.models import backbone_spec, build_model, speed_cue
from vad.offline.trainset import TrainSet, kept_teacher
from vad.runtime.batches import num_workers, score_clips
from vad.runtime.scorer import Scorer

CPU_DEFAULTS = {"model_frames": 48, "frames": 48, "train_frames": 32, "batch_size": 8, "train_batch": 8}
GPU_DEFAULTS = {"model_frames": 16384, "frames": 6000, "train_frames": 12000, "batch_size": 256, "train_batch": 128}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int) -> tuple[float, list[float]]:
    """``fn() -> frames``: one warm-up call, then ``repeat`` timed calls; (median frames/s, all rates)."""
    fn()
    rates = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        n = fn()
        sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), rates


# --- data ----------------------------------------------------------------------------------------------------
def make_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8: a smooth textured background, a few moving blobs and sensor noise."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    bg = np.stack([gaussian_filter(rng.normal(0, 1, (height, width)), s) for s in (2.0, 6.0, 20.0)], -1)
    bg = (bg - bg.min()) / (bg.max() - bg.min()) * 160 + 50
    out = np.empty((n, height, width, 3), np.uint8)
    blobs = rng.uniform([0, 0, 20, 40], [width, height, 40, 90], (6, 4))  # x, y, w, h
    colours = rng.integers(20, 235, (6, 3))
    for t in range(n):
        f = bg + rng.normal(0, 3, bg.shape)
        for (x, y, w, h), c in zip(blobs, colours, strict=True):
            x0, y0 = int((x + 4 * t) % (width - w)), int(y % (height - h))
            f[y0:y0 + int(h), x0:x0 + int(w)] = c
        out[t] = f.clip(0, 255).astype(np.uint8)
    return out


def write_jpegs(frames: np.ndarray, folder: Path) -> Clip:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}.jpg", quality=90)
    return frames_clip(folder, name=folder.name)


def write_mp4(frames: np.ndarray, path: Path, fps: int = 25) -> Clip:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "20", "preset": "veryfast"}
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return Clip(name=path.stem, path=path, kind="video")


# --- baseline: one frame at a time, as reference code does ----------------------------------------------------
class Baseline:
    """Per frame: Pillow decode, Pillow bilinear resize, to tensor, normalise, a batch of one through a float32
    NCHW copy of the model, ``float(score)`` (a host sync). A motion model gets the frame's window (the last
    ``window`` frames, the first frame standing in for a clip's missing past), the teacher run on each."""

    def __init__(self, model, size: tuple[int, int], normalization: str, device: torch.device) -> None:
        self.model = copy.deepcopy(model).to(device, memory_format=torch.contiguous_format).eval()
        self.size, self.device = size, device
        mean, std = NORMALIZATIONS[normalization]
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.recent: list[torch.Tensor] = []  # the last frames of the clip, for windows

    def tensor(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB").resize(self.size[::-1], Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> float:
        w = self.model.window
        if w > 1:
            self.recent = (self.recent or [x] * (w - 1))[-(w - 1):] + [x]
            x = torch.cat(self.recent)
        scores, _ = self.model.score_and_map(x.unsqueeze(0).to(self.device))
        return float(scores[0])

    def jpeg_folder(self, clip: Clip, out: Path) -> int:
        self.recent = []
        scores = []
        for p in clip.frame_paths:
            with Image.open(p) as img:
                scores.append(self.score(self.tensor(img)))
        np.save(out / "baseline_jpeg.npy", np.asarray(scores, np.float32))
        return len(scores)

    def video(self, clip: Clip, out: Path) -> int:
        import av

        self.recent = []
        scores = []
        with av.open(str(clip.path)) as c:
            for frame in c.decode(video=0):
                scores.append(self.score(self.tensor(frame.to_image())))
        np.save(out / "baseline_video.npy", np.asarray(scores, np.float32))
        return len(scores)


# --- training ---------------------------------------------------------------------------------------------------
def train_fast(model, clip: Clip, size, normalization, batch: int, device, dtype, workers: int, frames: int) -> int:
    """The training loop of :func:`vad.offline.train.train`: a shuffled :class:`FrameStream` in DataLoader workers,
    channels-last batches (pinned, non-blocking on CUDA), autocast, the loss summed on the device."""
    stream = FrameStream([clip], FrameTransform(size, normalization), batch_size=batch, shuffle=True,
                         ranges={clip.name: (0, frames)}, shuffle_buffer=max(256, batch), window=model.window)
    return _steps(model, make_loader(stream, workers, pin_memory=device.type == "cuda"), device, dtype)


def _steps(model, batches, device, dtype) -> int:
    """Training steps over ``batches`` (with kept teacher features where a batch has them); frames seen."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    total, seen = torch.zeros((), device=device), 0
    for b in batches:
        x = to_device(b["frames"], device)
        with autocast(device, dtype):
            loss = model.loss(x, **kept_teacher(b, device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach()
        seen += len(x)
    float(total)
    return seen


def train_cached(model, kept, batch: int, device, dtype) -> int:
    """:func:`train_fast` on samples held in memory (``train.cache``, :mod:`vad.offline.trainset`): no decoding, the
    teacher's features of every frame kept (neither row shifts objects, which would run the teacher again on the
    shifted samples: benchmarks/train_time.py measures whole trainings with them)."""
    return _steps(model, kept.epoch(batch, seed=0, epoch=0), device, dtype)


def train_baseline(model, base: Baseline, clip: Clip, batch: int, frames: int) -> int:
    """Pillow per frame, float32 NCHW, ``loss.item()`` every step (as a training log line does)."""
    import av

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    xs, seen, recent, w = [], 0, [], model.window
    with av.open(str(clip.path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i >= frames:
                break
            x = base.tensor(frame.to_image())
            if w > 1:  # a motion model trains on each frame's window
                recent = (recent or [x] * (w - 1))[-(w - 1):] + [x]
                x = torch.cat(recent)
            xs.append(x)
            if len(xs) == batch:
                loss = model.loss(torch.stack(xs).to(base.device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()
                seen += len(xs)
                xs = []
    return seen


def runtimes(model, size: tuple[int, int], normalization: str, tmp: Path) -> dict[str, object]:
    """``{backend: Runtime}`` for each installed runtime, over one export of ``model`` (``vad export``'s), and for
    each lower-precision copy that can be made here (``vad export --int8 --bf16``: int8 calibrated on 64 frames of
    the synthetic scene; speed only, the copies' check needs a trained model's hold-out: tests/test_quantize.py)."""
    from vad.runtime.export import PREFERENCE, Runtime, export_model, installed
    from vad.runtime.quantize import VARIANTS, _build, missing, record_feeds, runtime
    from vad.runtime.reference import NormalReference

    have = [b for b in PREFERENCE if installed(b)]
    if not have or importlib.util.find_spec("onnxscript") is None:
        return {}
    ckpt = {"input_size": list(size), "normalization": normalization}
    formats = ("onnx", "openvino") if "openvino" in have else ("onnx",)
    folder = export_model(copy.deepcopy(model), ckpt, NormalReference(np.arange(10.0)), tmp / "export", formats)
    out = {b: Runtime(b, folder) for b in have}
    copies = [v for v in VARIANTS if missing(v) is None]
    if copies:
        frames = tmp / "calibration"
        clip = write_jpegs(make_frames(64, *size, seed=2), frames)
        scorer = Scorer(copy.deepcopy(model), ckpt, ScoreConfig(batch_size=8, amp="off"), "cpu")
        feeds = record_feeds(scorer, out[have[0]], [clip], [(clip.name, (0, clip.num_frames))])
        for v in copies:
            _build(v, folder, folder / v, feeds, [])
            out[v] = runtime(folder / v)
    return out


def build(args) -> torch.nn.Module:
    """The benchmarked model (random student and predictor; the teacher's weights where offline)."""
    weights = "pretrained" if args.backbone == "efficientnet_lite0" else "random"
    torch.manual_seed(0)
    model = build_model(ModelConfig(method=args.method, backbone=args.backbone, teacher_weights=weights,
                                    motion=args.method == "stpm" and not args.no_motion,
                                    speed=args.method == "stpm" and not args.no_speed)).eval()
    if model.branches:  # speed only: any statistics will do
        model.set_branch_stats({b: torch.tensor([0.0, 1.0]) for b in model.branches})
    return model


def speed_stats(model: torch.nn.Module, height: int) -> None:
    """Any statistics for the speed cue (the flow's work does not depend on them) for inputs ``height`` high."""
    cue = speed_cue(model)
    if cue is not None:
        cue.row_ref = torch.ones(height // model.stride)
        cue.loc, cue.scale = torch.zeros(2), torch.ones(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda")
    ap.add_argument("--backbone", default="efficientnet_lite0", help="teacher backbone (default: the product's)")
    ap.add_argument("--method", default="stpm", choices=["stpm", "rstpm"])
    ap.add_argument("--no-motion", action="store_true", help="STPM without its motion branch (appearance only)")
    ap.add_argument("--no-speed", action="store_true", help="STPM without its speed cue (vad.models.speed)")
    ap.add_argument("--size", type=int, default=None, help="model-only input side (default: the e2e input size)")
    ap.add_argument("--height", type=int, default=576, help="frame height of the e2e clips (default 576)")
    ap.add_argument("--width", type=int, default=768, help="frame width of the e2e clips (default 768)")
    ap.add_argument("--input-height", type=int, default=256, help="network input height for e2e and training; "
                    "the width follows the frames' aspect ratio as in vad (default 256 -> 256x336)")
    for k, v in CPU_DEFAULTS.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=None,
                        help=f"default {v} on CPU, {GPU_DEFAULTS[k]} on CUDA")
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: vad's Scorer default)")
    ap.add_argument("--amp", default="auto", help="score.amp for the fast path (auto: bf16 on CUDA and AMX CPUs)")
    ap.add_argument("--train-amp", default="auto", help="train.amp for the fast path (auto: bf16 on CUDA only)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the fast path's model")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    device = resolve_device(args.device)
    n = {k: getattr(args, k) or v for k, v in (GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS).items()}
    torch.backends.cudnn.benchmark = True
    spec = backbone_spec(args.backbone)
    model = build(args)
    e2e_size = (args.input_height, max(16, int(round(args.input_height * args.width / args.height / 16)) * 16))
    size = (args.size, args.size) if args.size else e2e_size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device {device} ({name}); {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.method}{' + motion' if model.context else ''}"
          f"{' + speed' if speed_cue(model) else ''} with a "
          f"{args.backbone} teacher; model input {size[1]}x{size[0]}, e2e {args.width}x{args.height} frames -> "
          f"{e2e_size[1]}x{e2e_size[0]}; median of {args.repeat} after a warm-up")
    res: dict[str, float | int | str | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        speed_stats(model, size[0])
        model_rows(args, model, size, spec.normalization, device, n, res, tmp)
        speed_stats(model, e2e_size[0])
        e2e_rows(args, model, e2e_size, spec.normalization, device, n, res, tmp)
        if not args.skip_train:
            train_rows(args, model, e2e_size, spec.normalization, device, n, res, tmp)
    print(json.dumps({"device": str(device), "device_name": name, "cpu_cores": os.cpu_count(),
                      "torch_threads": torch.get_num_threads(), "method": args.method, "backbone": args.backbone,
                      "motion": bool(model.context), "speed": speed_cue(model) is not None,
                      "model_input": list(size), "e2e_input": list(e2e_size),
                      "frame_size": [args.height, args.width], "batch_size": n["batch_size"], "compile": args.compile,
                      **{k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}}))


def _scorer(model, size, normalization, n, args, device, runtime=None) -> Scorer:
    cfg = ScoreConfig(batch_size=n["batch_size"], amp=args.amp, num_workers=args.workers, compile=args.compile)
    scorer = Scorer(copy.deepcopy(model), {"input_size": list(size), "normalization": normalization}, cfg, device)
    if runtime is not None:
        scorer.use(runtime)
    return scorer


def model_rows(args, model, size, normalization, device, n, res, tmp) -> None:
    """Normalised frames in memory -> scores: baseline (one frame, its window), torch fast path, runtimes."""
    x = torch.randn(n["batch_size"], 3, *size, device=device)
    paths = {"torch": _scorer(model, size, normalization, n, args, device)}
    if device.type == "cpu":
        paths.update({b: _scorer(model, size, normalization, n, args, device, r)
                      for b, r in runtimes(model, size, normalization, tmp / "model").items()})
    for backend, scorer in paths.items():
        def fast(scorer=scorer) -> int:
            done = 0
            while done < n["model_frames"]:
                scorer(x, "bench", done)  # consecutive frames of one clip: a motion model's past is kept
                done += len(x)
            return done

        key = "model_fps" if backend == "torch" else f"model_fps_{backend}"
        res[key], _ = timed(fast, device, args.repeat)
    base = Baseline(model, size, normalization, device)
    x1 = torch.randn(3, *size)
    count = max(4, n["model_frames"] // (64 if device.type == "cuda" else 4))  # fewer: it is slow

    def model_base() -> int:
        base.recent = []
        for _ in range(count):
            base.score(x1)
        return count

    res["baseline_model_fps"], _ = timed(model_base, device, args.repeat)
    res["speedup_model"] = res["model_fps"] / res["baseline_model_fps"]
    layout = "channels-last" if paths["torch"].runner.layout == torch.channels_last else "contiguous"
    others = "".join(f" | {b} {res[f'model_fps_{b}']:.1f}" for b in paths if b != "torch")
    print(f"model only      baseline {res['baseline_model_fps']:7.1f} frames/s (batch 1, float32) | torch "
          f"{res['model_fps']:.1f} (batch {n['batch_size']}, {paths['torch'].runner.dtype or 'float32'}, {layout}"
          f"{', compiled' if args.compile else ''}){others}")


def e2e_rows(args, model, e2e_size, normalization, device, n, res, tmp) -> None:
    """Files on disk -> scores on disk: decoding alone, then baseline, torch fast path and runtimes."""
    from scipy.stats import spearmanr

    frames = make_frames(n["frames"], args.height, args.width)
    clips = {"jpeg": write_jpegs(frames, tmp / "jpeg"), "video": write_mp4(frames, tmp / "video.mp4")}
    del frames
    for kind, clip in clips.items():
        res[f"decode_fps_{kind}"], _ = timed(lambda clip=clip: sum(len(f) for _, f in iter_frames(clip)), device,
                                             args.repeat)
    if device.type == "cuda":
        res["decode_fps_jpeg_gpu"], _ = timed(lambda: sum(len(f) for _, f in iter_frames(clips["jpeg"], device=device)),
                                              device, args.repeat)
    print(f"decode only     JPEG {res['decode_fps_jpeg']:9.1f} frames/s, video {res['decode_fps_video']:8.1f} "
          "(one CPU process)")
    paths = {"torch": _scorer(model, e2e_size, normalization, n, args, device)}
    if device.type == "cpu":
        paths.update({b: _scorer(model, e2e_size, normalization, n, args, device, r)
                      for b, r in runtimes(model, e2e_size, normalization, tmp / "e2e").items()})
    base = Baseline(model, e2e_size, normalization, device)
    out = tmp / "run"
    out.mkdir()
    for kind, clip in clips.items():
        key = "" if kind == "jpeg" else "_video"
        for backend, scorer in paths.items():
            def fast(clip=clip, scorer=scorer, backend=backend) -> int:
                return len(score_clips(scorer, [clip], out / backend, overwrite=True, progress=False)[clip.name])

            name = f"e2e{key}_fps" if backend == "torch" else f"e2e{key}_fps_{backend}"
            res[name], _ = timed(fast, device, args.repeat)
        slow = base.jpeg_folder if kind == "jpeg" else base.video
        res[f"baseline_e2e{key}_fps"], _ = timed(lambda clip=clip, slow=slow: slow(clip, out), device, args.repeat)
        res[f"speedup_e2e{key}"] = res[f"e2e{key}_fps"] / res[f"baseline_e2e{key}_fps"]
        fast_scores = np.load(out / "torch" / "scores" / f"{clip.name}.npy")
        res[f"rank_corr_{kind}"] = float(spearmanr(fast_scores, np.load(out / f"baseline_{kind}.npy")).statistic)
        others = "".join(f" | {b} {res[f'e2e{key}_fps_{b}']:.1f}" for b in paths if b != "torch")
        print(f"e2e {kind:<5}       baseline {res[f'baseline_e2e{key}_fps']:7.1f} frames/s | torch "
              f"{res[f'e2e{key}_fps']:.1f} ({res[f'speedup_e2e{key}']:.2f}x; {num_workers(paths['torch'])} decode "
              f"workers){others}; fast vs baseline score rank correlation {res[f'rank_corr_{kind}']:.4f}")


def train_rows(args, model, e2e_size, normalization, device, n, res, tmp) -> None:
    """Training steps: the fast loop against the baseline's."""
    train_video = write_mp4(make_frames(n["train_frames"], args.height, args.width, seed=1), tmp / "train.mp4")
    tdtype = amp_dtype(args.train_amp, device)
    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 0)
    fast_model = copy.deepcopy(model).to(device, memory_format=torch.channels_last).train()
    res["train_fps"], _ = timed(lambda: train_fast(fast_model, train_video, e2e_size, normalization, n["train_batch"],
                                                   device, tdtype, workers, n["train_frames"]), device, args.repeat)
    slow_model = copy.deepcopy(model).to(device).train()
    tb = Baseline(slow_model, e2e_size, normalization, device)
    res["baseline_train_fps"], _ = timed(lambda: train_baseline(slow_model, tb, train_video, n["train_batch"],
                                                                n["train_frames"]), device, args.repeat)
    res["speedup_train"] = res["train_fps"] / res["baseline_train_fps"]
    print(f"train           baseline {res['baseline_train_fps']:7.1f} frames/s | fast {res['train_fps']:.1f} "
          f"(batch {n['train_batch']}, amp {tdtype}, {workers} workers) | {res['speedup_train']:.2f}x")
    cached_model = copy.deepcopy(model).to(device, memory_format=torch.channels_last).train()
    if tdtype is None:  # as vad.offline.train: folded in float32 only
        cached_model.fold_teacher()
    t0 = time.perf_counter()
    kept = TrainSet([train_video], [(train_video.name, (0, n["train_frames"]))],
                    FrameTransform(e2e_size, normalization), cached_model.window,
                    cached_model if cached_model.teacher_cache else None, device, tdtype)
    res["train_cache_setup_s"] = time.perf_counter() - t0
    res["train_fps_cached"], _ = timed(lambda: train_cached(cached_model, kept, n["train_batch"], device, tdtype),
                                       device, args.repeat)
    print(f"train, cached   {res['train_fps_cached']:7.1f} frames/s after {res['train_cache_setup_s']:.1f}s of "
          f"decoding and teacher features once | {res['train_fps_cached'] / res['baseline_train_fps']:.2f}x")


if __name__ == "__main__":
    main()
