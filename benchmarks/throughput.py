#!/usr/bin/env python3
"""Throughput (frames/s) of vad's scoring and training paths against a naive baseline, side by side in one run.

Cases, each timed for the fast path (the code ``vad score`` / ``vad train`` run) and for a baseline written
the way reference implementations are (one frame at a time, Pillow decoding and resizing per frame, float32,
NCHW, a host synchronisation per frame or step):

- model: scoring a batch already on the device, 256x256 input (``--size``);
- e2e JPEG: a folder of 856x480 JPEG frames -> decode -> resize/normalise -> model -> per-frame score, the
  scores written to disk (fast: :func:`vad.score.score_clips`, the product's path);
- e2e video: the same frames as an H.264 MP4;
- decode: decoding alone (JPEG folder, video), to show whether decoding limits the end-to-end rate;
- train: training steps (decode, shuffle, forward, backward, optimiser) at the product's input size;
- motion: STPM with its motion branch (``model.motion``, the default for stpm: windows of 3 frames, the teacher on
  each, the predictor) against STPM alone, both on the fast path: model only, e2e JPEG and training.

Every case runs once to warm up (file cache, cuDNN autotuning, torch.compile), then ``--repeat`` times with the
device synchronised before the clock stops; the median is reported. The frames are synthetic (a textured
scene, moving blobs, sensor noise), made in a temporary folder. The teacher's weights are random unless they
are available offline (efficientnet_lite0): speed does not depend on the values. The last line is one JSON object.

    python benchmarks/throughput.py --device cpu                     # about 3 minutes on 2 cores
    python benchmarks/throughput.py --device cuda --compile          # GPU defaults: large batches and counts
"""

from __future__ import annotations

import argparse
import copy
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
from vad.models import backbone_spec, build_model
from vad.score import Scorer, score_clips

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
    NCHW copy of the model, ``float(score)`` (a host sync)."""

    def __init__(self, model, size: tuple[int, int], normalization: str, device: torch.device) -> None:
        self.model = copy.deepcopy(model).to(device, memory_format=torch.contiguous_format).eval()
        self.size, self.device = size, device
        mean, std = NORMALIZATIONS[normalization]
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def tensor(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB").resize(self.size[::-1], Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> float:
        scores, _ = self.model.score_and_map(x.unsqueeze(0).to(self.device))
        return float(scores[0])

    def jpeg_folder(self, clip: Clip, out: Path) -> int:
        scores = []
        for p in clip.frame_paths:
            with Image.open(p) as img:
                scores.append(self.score(self.tensor(img)))
        np.save(out / "baseline_jpeg.npy", np.asarray(scores, np.float32))
        return len(scores)

    def video(self, clip: Clip, out: Path) -> int:
        import av

        scores = []
        with av.open(str(clip.path)) as c:
            for frame in c.decode(video=0):
                scores.append(self.score(self.tensor(frame.to_image())))
        np.save(out / "baseline_video.npy", np.asarray(scores, np.float32))
        return len(scores)


# --- training ---------------------------------------------------------------------------------------------------
def train_fast(model, clip: Clip, size, normalization, batch: int, device, dtype, workers: int, frames: int) -> int:
    """The training loop of :func:`vad.train.train`: a shuffled :class:`FrameStream` in DataLoader workers,
    channels-last batches (pinned, non-blocking on CUDA), autocast, the loss summed on the device."""
    stream = FrameStream([clip], FrameTransform(size, normalization), batch_size=batch, shuffle=True,
                         ranges={clip.name: (0, frames)}, shuffle_buffer=max(256, batch), window=model.window)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    total, seen = torch.zeros((), device=device), 0
    for b in make_loader(stream, workers, pin_memory=device.type == "cuda"):
        x = to_device(b["frames"], device)
        with autocast(device, dtype):
            loss = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach()
        seen += len(x)
    float(total)
    return seen


def train_baseline(model, base: Baseline, clip: Clip, batch: int, frames: int) -> int:
    """Pillow per frame, float32 NCHW, ``loss.item()`` every step (as a training log line does)."""
    import av

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    xs, seen = [], 0
    with av.open(str(clip.path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i >= frames:
                break
            xs.append(base.tensor(frame.to_image()))
            if len(xs) == batch:
                loss = model.loss(torch.stack(xs).to(base.device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()
                seen += len(xs)
                xs = []
    return seen


def motion_rows(args, appearance, res: dict, n: dict, device, e2e_size, normalization: str, jpeg: Clip,
                train_video: Clip, tmp: Path) -> None:
    """The motion model against the appearance-only one, fast path both: model only, e2e JPEG, training."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=args.backbone, teacher_weights="random", motion=True)).eval()
    model.load_state_dict(appearance.state_dict(), strict=False)  # the same teacher and student
    model.set_branch_stats({"appearance": torch.tensor([0.0, 1.0]), "motion": torch.tensor([0.0, 1.0])})  # speed only
    cfg = ScoreConfig(batch_size=n["batch_size"], amp=args.amp, num_workers=args.workers, compile=args.compile)
    scorer = Scorer(model, {"input_size": list(e2e_size), "normalization": normalization}, cfg, device)
    x = torch.randn(n["batch_size"], 3 * model.window, args.size, args.size, device=device)
    small = Scorer(copy.deepcopy(model), {"input_size": [args.size] * 2, "normalization": normalization}, cfg, device)

    def model_fast() -> int:
        done = 0
        while done < n["model_frames"]:
            small(x)
            done += len(x)
        return done

    def e2e() -> int:
        return len(score_clips(scorer, [jpeg], tmp / "run" / "motion", overwrite=True, progress=False)[jpeg.name])

    res["motion_model_fps"], _ = timed(model_fast, device, args.repeat)
    res["motion_e2e_fps"], _ = timed(e2e, device, args.repeat)
    print(f"motion model    {res['motion_model_fps']:9.1f} frames/s | appearance only {res['model_fps']:9.1f}")
    print(f"motion e2e JPEG {res['motion_e2e_fps']:9.1f} frames/s | appearance only {res['e2e_fps']:9.1f}")
    if not args.skip_train:
        tdtype = amp_dtype(args.train_amp, device)
        workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 0)
        train_model = model.to(device, memory_format=torch.channels_last).train()
        res["motion_train_fps"], _ = timed(lambda: train_fast(train_model, train_video, e2e_size, normalization,
                                                              n["train_batch"], device, tdtype, workers,
                                                              n["train_frames"]), device, args.repeat)
        print(f"motion train    {res['motion_train_fps']:9.1f} frames/s | appearance only {res['train_fps']:9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda")
    ap.add_argument("--backbone", default="resnet18", help="teacher backbone (default: resnet18, the paper's)")
    ap.add_argument("--method", default="stpm", choices=["stpm", "rstpm"])
    ap.add_argument("--size", type=int, default=256, help="model-only input side (default 256)")
    ap.add_argument("--height", type=int, default=480, help="frame height of the e2e clips (default 480)")
    ap.add_argument("--width", type=int, default=856, help="frame width of the e2e clips (default 856)")
    ap.add_argument("--input-height", type=int, default=256, help="network input height for e2e and training; "
                    "the width follows the frames' aspect ratio as in vad (default 256 -> 256x464)")
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
    d = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    n = {k: getattr(args, k) or v for k, v in d.items()}
    torch.backends.cudnn.benchmark = True
    spec = backbone_spec(args.backbone)
    weights = "pretrained" if args.backbone == "efficientnet_lite0" else "random"
    torch.manual_seed(0)
    model = build_model(ModelConfig(method=args.method, backbone=args.backbone, teacher_weights=weights,
                                    motion=False)).eval()
    input_w = max(16, int(round(args.input_height * args.width / args.height / 16)) * 16)
    e2e_size = (args.input_height, input_w)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device {device} ({name}); {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.method} with a {args.backbone} teacher ({weights} weights: "
          f"speed only); model input {args.size}x{args.size}, e2e {args.width}x{args.height} frames -> "
          f"{e2e_size[1]}x{e2e_size[0]}; median of {args.repeat} after a warm-up")

    def scorer_for(size, batch) -> Scorer:
        cfg = ScoreConfig(batch_size=batch, amp=args.amp, num_workers=args.workers, compile=args.compile)
        return Scorer(copy.deepcopy(model), {"input_size": list(size), "normalization": spec.normalization}, cfg,
                      device)

    res: dict[str, float | int | str | None] = {}

    # model only ------------------------------------------------------------------------------------------------
    scorer = scorer_for((args.size, args.size), n["batch_size"])
    x = torch.randn(n["batch_size"], 3, args.size, args.size, device=device)

    def model_fast() -> int:
        done = 0
        while done < n["model_frames"]:
            scorer(x)
            done += len(x)
        return done

    base = Baseline(model, (args.size, args.size), spec.normalization, device)
    x1 = torch.randn(3, args.size, args.size)

    def model_base() -> int:
        for _ in range(n["model_frames"] // (64 if device.type == "cuda" else 4)):  # fewer: it is slow
            base.score(x1)
        return n["model_frames"] // (64 if device.type == "cuda" else 4)

    res["model_fps"], _ = timed(model_fast, device, args.repeat)
    res["baseline_model_fps"], _ = timed(model_base, device, args.repeat)
    print(f"model only      fast {res['model_fps']:9.1f} frames/s (batch {n['batch_size']}, amp "
          f"{scorer.dtype}, channels-last{', compiled' if args.compile else ''}) | baseline "
          f"{res['baseline_model_fps']:8.1f} (batch 1, float32)")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = make_frames(n["frames"], args.height, args.width)
        jpeg = write_jpegs(frames, tmp / "jpeg")
        video = write_mp4(frames, tmp / "video.mp4")
        train_video = write_mp4(make_frames(n["train_frames"], args.height, args.width, seed=1), tmp / "train.mp4")
        del frames

        # decoding alone --------------------------------------------------------------------------------------
        def decode(clip: Clip, **kw) -> int:
            return sum(len(f) for _, f in iter_frames(clip, batch_size=64, **kw))

        res["decode_fps_jpeg"], _ = timed(lambda: decode(jpeg), device, args.repeat)
        res["decode_fps_video"], _ = timed(lambda: decode(video), device, args.repeat)
        if device.type == "cuda":
            res["decode_fps_jpeg_gpu"], _ = timed(lambda: decode(jpeg, device=device), device, args.repeat)
        gpu = f"; nvJPEG {res['decode_fps_jpeg_gpu']:.1f}" if "decode_fps_jpeg_gpu" in res else ""
        print(f"decode only     JPEG {res['decode_fps_jpeg']:9.1f} frames/s, video {res['decode_fps_video']:8.1f} "
              f"(one CPU process{gpu})")

        # end to end --------------------------------------------------------------------------------------------
        scorer = scorer_for(e2e_size, n["batch_size"])
        base = Baseline(model, e2e_size, spec.normalization, device)
        out = tmp / "run"
        out.mkdir()
        for kind, clip in (("jpeg", jpeg), ("video", video)):
            def fast(clip=clip) -> int:
                r = score_clips(scorer, [clip], out / "fast", overwrite=True, progress=False)
                return len(r[clip.name])

            slow = base.jpeg_folder if kind == "jpeg" else base.video
            key = "" if kind == "jpeg" else "_video"
            res[f"e2e{key}_fps"], _ = timed(fast, device, args.repeat)
            res[f"baseline_e2e{key}_fps"], _ = timed(lambda clip=clip, slow=slow: slow(clip, out), device, args.repeat)
            res[f"speedup_e2e{key}"] = res[f"e2e{key}_fps"] / res[f"baseline_e2e{key}_fps"]
            a = np.load(out / "fast" / "scores" / f"{clip.name}.npy")
            b = np.load(out / f"baseline_{kind}.npy")
            from scipy.stats import spearmanr

            res[f"rank_corr_{kind}"] = float(spearmanr(a, b).statistic)
            print(f"e2e {kind:<5}       fast {res[f'e2e{key}_fps']:9.1f} frames/s ({scorer.num_workers} decode workers)"
                  f" | baseline {res[f'baseline_e2e{key}_fps']:8.1f} | {res[f'speedup_e2e{key}']:.2f}x; "
                  f"score rank correlation fast vs baseline {res[f'rank_corr_{kind}']:.4f}")

        # training ----------------------------------------------------------------------------------------------
        if not args.skip_train:
            tdtype = amp_dtype(args.train_amp, device)
            workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 0)
            fast_model = copy.deepcopy(model).to(device, memory_format=torch.channels_last).train()
            res["train_fps"], _ = timed(lambda: train_fast(fast_model, train_video, e2e_size, spec.normalization,
                                                           n["train_batch"], device, tdtype, workers,
                                                           n["train_frames"]), device, args.repeat)
            slow_model = copy.deepcopy(model).to(device).train()
            tb = Baseline(slow_model, e2e_size, spec.normalization, device)
            res["baseline_train_fps"], _ = timed(lambda: train_baseline(slow_model, tb, train_video, n["train_batch"],
                                                                        n["train_frames"]), device, args.repeat)
            res["speedup_train"] = res["train_fps"] / res["baseline_train_fps"]
            print(f"train           fast {res['train_fps']:9.1f} frames/s (batch {n['train_batch']}, amp {tdtype}, "
                  f"{workers} workers) | baseline {res['baseline_train_fps']:8.1f} | {res['speedup_train']:.2f}x")

        if args.method == "stpm":
            motion_rows(args, model, res, n, device, e2e_size, spec.normalization, jpeg, train_video, tmp)

    res["speedup_model"] = res["model_fps"] / res["baseline_model_fps"]
    print(json.dumps({"device": str(device), "device_name": name, "cpu_cores": os.cpu_count(),
                      "method": args.method, "backbone": args.backbone, "weights": weights,
                      "model_size": args.size, "e2e_input": list(e2e_size), "frame_size": [args.height, args.width],
                      "batch_size": n["batch_size"], "compile": args.compile,
                      **{k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}}))


if __name__ == "__main__":
    main()
