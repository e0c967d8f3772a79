#!/usr/bin/env python3
r"""Training time per setting, side by side in one run: what a new camera's model costs to train.

Each setting trains the same config on the same data into its own temporary folder with :func:`vad.offline.train.train`
(everything the product runs: decoding, the training samples, every epoch's steps and validation, checkpoints, the
normal reference at the end), for ``--epochs`` epochs, one setting after the other. Settings:

- ``before``: the frames streamed and decoded every epoch (``train.cache=false``), the teacher's BatchNorms run
  as they are (the training of vad before the cache);
- ``stream``: streamed, with the frozen teacher's BatchNorms folded into its convolutions
  (:meth:`vad.models.backbones.Pyramid.fold`);
- ``cached``: the samples in memory and the teacher's features of each frame kept (:mod:`vad.offline.trainset`), the
  teacher folded; float32 (the default on a CPU without AMX);
- ``bf16``: cached, in bf16 autocast with the depthwise convolutions that train kept in float32 and the teacher
  folded (``train.amp=bf16``; the default on a CPU with AMX, ``train.amp=auto``);
- ``bf16-unfolded``: the same with the teacher's BatchNorms run as they are (bf16 training before commit 8c68035).

The first three run in float32 (``train.amp=off``) whatever the CPU.

Prints per run the wall-clock seconds, the CPU seconds of all the process's threads (a host that steals CPU
time inflates the wall clock, not these), each epoch's seconds (``train_log.jsonl``; the time before the first
epoch, and after the last, is the setup). With ``--rounds N`` the settings run in turn N times, so that a host
whose speed drifts (this one's does, by tens of percent within an hour) drifts under each alike. Then per
setting: the medians, a full training (the config's epochs) projected as the median setup plus that many median
epochs, and the speed-up against ``before`` as the median of each round's ratio. The last line is one JSON
object. The figures in docs/speed.md ("Training") come from:

    python benchmarks/train_time.py --config pipelines/campus.yaml --data /tmp/campus --epochs 2 --rounds 3 \
        --settings before bf16-unfolded bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vad.config import load_config
from vad.models.backbones import Pyramid
from vad.offline.pipeline import read_split, with_data
from vad.offline.train import train

SETTINGS = {"before": ["train.cache=false", "train.amp=off"], "stream": ["train.cache=false", "train.amp=off"],
            "cached": ["train.cache=true", "train.amp=off"], "bf16": ["train.cache=true", "train.amp=bf16"],
            "bf16-unfolded": ["train.cache=true", "train.amp=bf16"]}
UNFOLDED = ("before", "bf16-unfolded")  # the teacher's BatchNorms run as they are


def run(name: str, config: str, data: str, epochs: int, out: Path) -> dict:
    cfg = with_data(load_config(config, [*SETTINGS[name], f"train.epochs={epochs}"]), data)
    clips = read_split(cfg, "train")
    fold = Pyramid.fold
    if name in UNFOLDED:
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


def summary(name: str, runs: list[dict], epochs_full: int) -> dict:
    """One setting's rounds: medians, and the time of a full training projected from them (the setup, i.e. the
    total less its epochs, plus ``epochs_full`` median epochs)."""
    med = statistics.median
    setup = med(r["total_s"] - sum(r["epoch_s"]) for r in runs)
    epoch = med(s for r in runs for s in r["epoch_s"])
    return {"setting": name, "total_s": med(r["total_s"] for r in runs), "cpu_s": med(r["cpu_s"] for r in runs),
            "epoch_s": round(epoch, 1), "setup_s": round(setup, 1), "projected_s": round(setup + epochs_full * epoch),
            "val_loss": runs[-1]["val_loss"], "frames": runs[-1]["frames"], "rounds": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="pipelines/campus.yaml")
    ap.add_argument("--data", required=True, help="dataset root (its training split is trained on)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the settings in turn this many times (A B A B ...): a host whose speed drifts then "
                         "drifts under every setting alike; medians and paired ratios are reported")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = ap.parse_args()
    flags = [f for f in ("avx512_vnni", "avx512_bf16", "amx_bf16", "avx2") if f in Path("/proc/cpuinfo").read_text()]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, flags {' '.join(flags)}")
    runs: dict[str, list[dict]] = {name: [] for name in args.settings}
    for k in range(args.rounds):
        for name in args.settings:
            with tempfile.TemporaryDirectory() as tmp:
                r = run(name, args.config, args.data, args.epochs, Path(tmp) / name)
            runs[name].append(r)
            print(f"round {k + 1} {name:14s} total {r['total_s']:7.1f}s  CPU {r['cpu_s']:7.1f}s  epochs "
                  f"{r['epoch_s']}  val loss {r['val_loss']:.4f}", flush=True)
    full = load_config(args.config).train.epochs
    rows = [summary(name, rs, full) for name, rs in runs.items()]
    for r in rows:
        print(f"{r['setting']:14s} median total {r['total_s']:7.1f}s  CPU {r['cpu_s']:7.1f}s  epoch {r['epoch_s']}s  "
              f"setup {r['setup_s']}s  -> {full} epochs about {r['projected_s']}s")
    base = next((r for r in rows if r["setting"] == "before"), None)
    for r in rows if base else []:  # each round's ratio to the 'before' run beside it, then the median
        pairs = list(zip(base["rounds"], r["rounds"], strict=True))
        r["speedup"] = round(statistics.median(b["total_s"] / x["total_s"] for b, x in pairs), 2)
        r["cpu_speedup"] = round(statistics.median(b["cpu_s"] / x["cpu_s"] for b, x in pairs), 2)
        r["projected_vs_before"] = round(r["projected_s"] / base["projected_s"], 2)
        print(f"{r['setting']:14s} {r['speedup']:.2f}x as fast as 'before' (paired median; CPU time "
              f"{r['cpu_speedup']:.2f}x); a {full}-epoch training in about {r['projected_vs_before']}x its time")
    print(json.dumps({"epochs": args.epochs, "rounds": args.rounds, "rows": rows}))


if __name__ == "__main__":
    main()
