#!/usr/bin/env python3
"""Training time per setting, side by side in one run: what a new camera's model costs to train.

Each setting trains the same config on the same data into its own temporary folder with :func:`vad.train.train`
(everything the product runs: decoding, the training samples, every epoch's steps and validation, checkpoints, the
normal reference at the end), for ``--epochs`` epochs, one setting after the other. Settings:

- ``before``: the frames streamed and decoded every epoch (``train.cache=false``), the teacher's BatchNorms run
  as they are (the training of vad before the cache);
- ``stream``: streamed, with the frozen teacher's BatchNorms folded into its convolutions
  (:meth:`vad.models.backbones.Pyramid.fold`);
- ``cached``: the samples in memory and the teacher's features of each frame kept (:mod:`vad.trainset`), the
  teacher folded; float32 (the default on a CPU without AMX);
- ``bf16``: cached, in bf16 autocast with the depthwise convolutions that train kept in float32
  (``train.amp=bf16``; the default on a CPU with AMX, ``train.amp=auto``).

The first three run in float32 (``train.amp=off``) whatever the CPU.

Prints per setting the wall-clock seconds, the CPU seconds of all the process's threads (a host that steals CPU
time inflates the wall clock, not these), each epoch's seconds (``train_log.jsonl``; the time before the first
epoch, and after the last, is the total's rest) and the speed-up against ``before``; the last line is one JSON
object. The figures in docs/speed.md ("Training") come from:

    python benchmarks/train_time.py --config pipelines/campus.yaml --data /tmp/campus --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from vad.config import load_config
from vad.models.backbones import Pyramid
from vad.pipeline import read_split, with_data
from vad.train import train

SETTINGS = {"before": ["train.cache=false", "train.amp=off"], "stream": ["train.cache=false", "train.amp=off"],
            "cached": ["train.cache=true", "train.amp=off"], "bf16": ["train.cache=true", "train.amp=bf16"]}


def run(name: str, config: str, data: str, epochs: int, out: Path) -> dict:
    cfg = with_data(load_config(config, [*SETTINGS[name], f"train.epochs={epochs}"]), data)
    clips = read_split(cfg, "train")
    fold = Pyramid.fold
    if name == "before":  # the teacher as it is
        Pyramid.fold = lambda self: self
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        train(clips, cfg, out, device="cpu", progress=False)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        Pyramid.fold = fold
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    epoch_s = [b["seconds"] - a for a, b in zip([0.0] + [r["seconds"] for r in log], log, strict=False)]
    return {"setting": name, "total_s": round(total, 1), "cpu_s": round(cpu, 1),
            "epoch_s": [round(s, 1) for s in epoch_s], "val_loss": log[-1]["val_loss"],
            "frames": sum(c.num_frames for c in clips)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="pipelines/campus.yaml")
    ap.add_argument("--data", required=True, help="dataset root (its training split is trained on)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = ap.parse_args()
    flags = [f for f in ("avx512_vnni", "avx512_bf16", "amx_bf16", "avx2") if f in Path("/proc/cpuinfo").read_text()]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, flags {' '.join(flags)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings:
            r = run(name, args.config, args.data, args.epochs, Path(tmp) / name)
            rows.append(r)
            print(f"{name:8s} total {r['total_s']:7.1f}s  CPU {r['cpu_s']:7.1f}s  epochs {r['epoch_s']}  "
                  f"val loss {r['val_loss']:.4f}", flush=True)
    base = next((r for r in rows if r["setting"] == "before"), None)
    if base is not None:
        for r in rows:
            r["speedup"] = round(base["total_s"] / r["total_s"], 2)
            r["cpu_speedup"] = round(base["cpu_s"] / r["cpu_s"], 2)
            print(f"{r['setting']:8s} {r['speedup']:.2f}x as fast as 'before' (CPU time: {r['cpu_speedup']:.2f}x)")
    print(json.dumps({"epochs": args.epochs, "rows": rows}))


if __name__ == "__main__":
    main()
