#!/usr/bin/env python3
"""The CPU work around the model when scoring, before and after 22c97c4 and the read-ahead, interleaved in one process.

22c97c4 keeps JPEG frames decoded on the CPU channels-last (libjpeg-turbo's ``(H, W, 3)`` rows; before, they were
stacked into NCHW and copied back to channels-last for the uint8 resize) and reads the speed cue's grey frames back from
the normalised input with one weighted sum (before: undo the normalisation, then the channels' mean). Then the loader is
read a batch ahead on a thread (vad.io.dataset.read_ahead; before, the main thread decoded each batch while the network
waited). This script scores the same JPEG folder end to end (:func:`vad.runtime.batches.score_clips`, the product's
path) with the default model (STPM, motion, speed cue; Lite0 teacher; 768x576 frames -> 336x256, as
``benchmarks/throughput.py``) on the fastest installed runtime copy, in three versions round by round (the order
rotating), so that this machine's drift affects all alike: "before" (the two old steps put back, no read-ahead),
"22c97c4" (no read-ahead) and "now". Prints frames/s per round and the medians; the last line is JSON.

    python benchmarks/scoring_overhead.py [--rounds 8] [--frames 96]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as bench  # noqa: E402  (the same model, frames and runtimes)

import vad.io.decode as decode  # noqa: E402
import vad.runtime.batches as batches  # noqa: E402
from vad.io.dataset import NORMALIZATIONS  # noqa: E402
from vad.models import speed  # noqa: E402
from vad.runtime.batches import score_clips  # noqa: E402

NOW = {"decode": decode.decode_jpeg_files, "grey": speed.SpeedStreams.grey}


def decode_before(paths, data, device=None) -> torch.Tensor:
    """As before 22c97c4: the batch stacked NCHW (the resize then copies it back to channels-last)."""
    return NOW["decode"](paths, data, device).contiguous()


def grey_before(self, x: torch.Tensor):
    """As before 22c97c4: the normalisation undone on every channel, then their mean (imagenet statistics, the
    default model's)."""
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) * 255 for v in NORMALIZATIONS["imagenet"])
    v = (x[:, :3].float() * std + mean).mean(1)
    return v.round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


VERSIONS = ("before", "22c97c4", "now")


def use(version: str) -> None:
    decode.decode_jpeg_files = decode_before if version == "before" else NOW["decode"]
    speed.SpeedStreams.grey = grey_before if version == "before" else NOW["grey"]
    batches.READ_AHEAD = version == "now"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--frames", type=int, default=96)
    args = p.parse_args()

    class Model:  # benchmarks/throughput.py's defaults
        backbone, method, no_motion, no_speed, amp, workers, compile = ("efficientnet_lite0", "stpm", False, False,
                                                                          "auto", None, False)

    model = bench.build(Model)
    bench.speed_stats(model, 256)
    tmp = Path(tempfile.mkdtemp())
    size = (256, 336)
    runtimes = bench.runtimes(model, size, "imagenet", tmp / "export")
    order = ["openvino-int8", "onnxruntime-int8", "openvino", "onnxruntime"]
    backend = next((b for b in order if b in runtimes), None)
    scorer = bench._scorer(model, size, "imagenet", {"batch_size": 8}, Model, torch.device("cpu"),
                           runtimes.get(backend))
    clip = bench.write_jpegs(bench.make_frames(args.frames, 576, 768), tmp / "jpeg")
    fps: dict[str, list[float]] = {v: [] for v in VERSIONS}
    for r in range(args.rounds):
        for version in VERSIONS[r % 3:] + VERSIONS[:r % 3]:
            use(version)
            score_clips(scorer, [clip], tmp / "run", overwrite=True, progress=False)  # warm
            t0 = time.perf_counter()
            score_clips(scorer, [clip], tmp / "run", overwrite=True, progress=False)
            fps[version].append(args.frames / (time.perf_counter() - t0))
    use("now")
    result = {"backend": backend or "torch", "frames": args.frames,
              **{f"{v}_fps": statistics.median(x) for v, x in fps.items()},
              **{f"{v}_rounds": [round(f, 1) for f in x] for v, x in fps.items()}}
    result["speedup"] = result["now_fps"] / result["before_fps"]
    result["read_ahead_speedup"] = result["now_fps"] / result["22c97c4_fps"]
    for v in fps:
        print(f"{v:<7} {result[f'{v}_fps']:6.1f} frames/s (median; rounds: {' '.join(f'{f:.0f}' for f in fps[v])})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
