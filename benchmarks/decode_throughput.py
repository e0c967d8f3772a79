#!/usr/bin/env python3
"""Decoding throughput (frames/s) of each backend, side by side in one run.

Video: PyAV with frame threading (the default), PyAV single-threaded, decord. JPEG folder (the video's
frames written as JPEGs): Pillow vs torchvision.io.decode_jpeg (CPU here; CUDA with --device cuda).
Each is run --repeat times after one warm-up pass; the median is reported. The last line is JSON.

    python benchmarks/decode_throughput.py --video ../shared/bench/vtest.avi
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vad.io import iter_frames, probe

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "bench" / "vtest.avi"


def measure(fn, repeat: int) -> tuple[float, int]:
    fn()  # warm-up (file cache, codec init)
    times, n = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times), n


def count(source, **kw) -> int:
    return sum(len(x) for _, x in iter_frames(source, **kw))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--jpeg-frames", type=int, default=300, help="frames written as JPEGs for the folder test")
    ap.add_argument("--device", default="cpu", help="device for torchvision JPEG decoding (cpu or cuda)")
    args = ap.parse_args()
    if not args.video.is_file():
        sys.exit(f"error: {args.video} not found; pass --video PATH")
    info = probe(args.video)
    print(f"{args.video.name}: {info.width}x{info.height}, {info.num_frames} frames, {info.fps:g} fps; "
          f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, {platform.processor() or ''}")
    bs = args.batch_size
    results: dict[str, float] = {}
    cases = {
        "pyav_threaded": lambda: count(args.video, backend="pyav", batch_size=bs),
        "pyav_1thread": lambda: count(args.video, backend="pyav", batch_size=bs, threads=1),
    }
    try:
        import decord  # noqa: F401

        cases["decord"] = lambda: count(args.video, backend="decord", batch_size=bs)
    except ImportError:
        print("decord not installed (pip install 'vad[decord]'): skipped")
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        folder = Path(tmp) / "frames"
        folder.mkdir()
        for first, x in iter_frames(args.video, stop=args.jpeg_frames):
            for i, f in enumerate(x.permute(0, 2, 3, 1).numpy()):
                Image.fromarray(f).save(folder / f"{first + i:05d}.jpg", quality=95)
        cases["jpeg_pil"] = lambda: count(folder, backend="pil", batch_size=bs)
        cases["jpeg_torchvision_" + args.device] = lambda: count(
            folder, backend="torchvision", batch_size=bs, device=args.device)
        for name, fn in cases.items():
            fps, n = measure(fn, args.repeat)
            results[name] = round(fps, 1)
            print(f"  {name:<26} {fps:8.1f} frames/s  ({n} frames, median of {args.repeat})")
    if "decord" in results:
        print(f"  pyav_threaded / decord = {results['pyav_threaded'] / results['decord']:.2f}x")
    print(json.dumps({"video": args.video.name, "width": info.width, "height": info.height,
                      "cpu_cores": os.cpu_count(), **results}))


if __name__ == "__main__":
    main()
