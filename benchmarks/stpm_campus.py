#!/usr/bin/env python3
"""Train and score STPM on a ShanghaiTech-layout benchmark and report frame-level AUC.

Meant for the campus benchmark (``python ../shared/bench/make_campus_bench.py --out /tmp/campus``); works for
any ShanghaiTech-layout root. Config overrides select what to compare, so every row of an ablation comes from
the same code path as the pipeline::

    python benchmarks/stpm_campus.py --data /tmp/campus --out runs/bench/default
    python benchmarks/stpm_campus.py --data /tmp/campus --out runs/bench/sgd \\
        --set train.optimizer=sgd train.lr=0.4 train.weight_decay=1e-4 train.schedule=constant
    python benchmarks/stpm_campus.py --data /tmp/campus --out runs/bench/random --set model.teacher_weights=random

Scores are raw per-frame maxima (no temporal smoothing, no per-clip normalisation), without and with the
model's per-position calibration (statistics of held-out *training* frames). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from vad.config import RunConfig, apply_overrides, to_dict
from vad.device import resolve_device
from vad.io import read_dataset
from vad.metrics import event_aucs, macro_auc, micro_auc
from vad.offline.pipeline import save_config, with_data
from vad.offline.train import train
from vad.runtime.batches import score_clips
from vad.runtime.checkpoint import load_model
from vad.runtime.scorer import Scorer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="ShanghaiTech-layout root (e.g. /tmp/campus)")
    p.add_argument("--out", type=Path, required=True, help="run folder (resumes training if it has checkpoints)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=5")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = with_data(apply_overrides(RunConfig(), args.set), args.data, "shanghaitech")
    device = resolve_device(args.device)
    train_clips = read_dataset("shanghaitech", args.data, "train")
    test_clips = read_dataset("shanghaitech", args.data, "test")

    save_config(cfg, args.out / "config.yaml")
    t0 = time.perf_counter()
    model_path = train(train_clips, cfg, args.out, device=device)
    train_s = time.perf_counter() - t0
    model, ckpt = load_model(model_path)
    labels = {c.name: c.labels for c in test_clips}
    result = {"data": str(args.data), "device": str(device), "torch_threads": torch.get_num_threads(),
              "config": to_dict(cfg), "input_size": ckpt["input_size"], "best_epoch": ckpt["epoch"] + 1,
              "train_seconds": round(train_s, 1), "train_frames": sum(c.num_frames for c in train_clips)}
    for calibrated in (False, True) if model.has_position_stats else (False,):
        tag = "calibrated" if calibrated else "uncalibrated"
        scorer = Scorer(model, ckpt, replace(cfg.score, per_position=calibrated), device=device)
        t1 = time.perf_counter()
        scores = score_clips(scorer, test_clips, args.out / f"scores_{tag}", overwrite=True, progress=False)
        secs = time.perf_counter() - t1
        macro, skipped = macro_auc(scores, labels)
        result[tag] = {"micro_auc": round(micro_auc(scores, labels), 4), "macro_auc": round(macro, 4),
                       "macro_skipped_clips": skipped, "score_fps": round(sum(map(len, scores.values())) / secs, 1),
                       "events": {k: round(v, 4) for k, v in event_aucs(scores, labels).items()}}
    print(f"{'scores':14s} {'micro AUC':>9s} {'macro AUC':>9s}  per event")
    for tag in ("uncalibrated", "calibrated"):
        if tag in result:
            r = result[tag]
            ev = " ".join(f"{v:.2f}" for v in r["events"].values())
            print(f"{tag:14s} {r['micro_auc']:9.4f} {r['macro_auc']:9.4f}  {ev}")
    print(f"trained {cfg.train.epochs} epochs in {train_s:.0f}s on {device} (best epoch {result['best_epoch']})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
