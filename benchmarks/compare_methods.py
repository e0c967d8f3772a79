#!/usr/bin/env python3
"""Compare finished pipeline runs of different methods side by side (the README's method table).

Each RUN is a folder written by ``run_pipeline.py run`` (train, score, evaluate). AUCs and the training time come
from the run's own files (``metrics.json``, ``train_log.jsonl``); scoring speed is measured here, in one process
and one after the other, by re-scoring every run's test split (decode -> resize/normalise -> model -> per-frame
score) into a temporary folder, after one warm-up batch. The re-scored frame scores are also checked against the
run's saved ones. ::

    for m in stpm rstpm mkd; do
        python run_pipeline.py run --config campus --data /tmp/campus --out runs/campus_$m --set model.method=$m
    done
    python benchmarks/compare_methods.py runs/campus_stpm runs/campus_rstpm runs/campus_mkd

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vad.config import load_config
from vad.device import resolve_device
from vad.metrics import event_aucs
from vad.offline.pipeline import read_split
from vad.runtime.batches import score_clips
from vad.runtime.checkpoint import load_model
from vad.runtime.scorer import Scorer


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU, {torch.get_num_threads()} threads ({cpu})"


def train_seconds(run: Path) -> tuple[float, int, bool]:
    """(seconds, epochs, resumed): the log's per-epoch ``seconds`` restart when a run resumes, so sum the pieces."""
    lines = [json.loads(ln) for ln in (run / "train_log.jsonl").read_text().splitlines() if ln]
    total, last, resumed = 0.0, 0.0, False
    for rec in lines:
        if rec["seconds"] < last:  # a new session started
            total, resumed = total + last, True
        last = rec["seconds"]
    return total + last, len(lines), resumed


def measure(run: Path, device: torch.device) -> dict:
    cfg = load_config(str(run / "config.yaml"))
    clips = read_split(cfg, "test")
    model, ckpt = load_model(run / "model.pt")
    scorer = Scorer(model, ckpt, replace(cfg.score, save_maps=False), device)
    x = scorer.transform(torch.zeros(cfg.score.batch_size, 3, *ckpt["input_size"], dtype=torch.uint8))
    scorer(x)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        scores = score_clips(scorer, clips, tmp, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
    frames = sum(len(v) for v in scores.values())
    saved = {c.name: np.load(run / "scores" / f"{c.name}.npy") for c in clips}
    labels = {c.name: c.labels for c in clips if c.labels is not None}
    m = json.loads((run / "metrics.json").read_text())
    tsec, epochs, resumed = train_seconds(run)
    return {
        "run": str(run), "method": cfg.model.method, "backbone": cfg.model.backbone,
        "variant": f"score {cfg.model.mkd_score}" if cfg.model.method == "mkd" else "",
        "input_size": ckpt["input_size"], "epochs": epochs, "train_seconds": round(tsec, 1), "resumed": resumed,
        "micro_auc_raw": m["frame_auc_micro_raw"], "micro_auc": m["frame_auc_micro"], "macro_auc": m["frame_auc_macro"],
        "smoothing_sigma": m["sigma"], "normalisation": m["normalisation"],
        "events": {k: round(v, 3) for k, v in event_aucs(saved, labels).items()},
        "score_fps": round(frames / secs, 1), "score_frames": frames,
        "rescore_max_abs_diff": float(max(np.abs(scores[k] - saved[k]).max() for k in saved)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders written by 'run_pipeline.py run'")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    for run in args.runs:
        missing = [f for f in ("config.yaml", "model.pt", "metrics.json", "train_log.jsonl") if not (run / f).is_file()]
        if missing:
            p.error(f"{run} is not a finished run (missing {', '.join(missing)})")
    device = resolve_device(args.device)
    rows = [measure(run, device) for run in args.runs]
    where = machine(device)
    print("| method | micro AUC raw | micro AUC smoothed + min-max | macro AUC | training | scoring | machine |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        label = ", ".join(filter(None, (r["backbone"], r["variant"])))
        print(f"| {r['method']} ({label}) | {r['micro_auc_raw']:.3f} | {r['micro_auc']:.3f} | "
              f"{r['macro_auc']:.3f} | {r['train_seconds'] / 60:.1f} min ({r['epochs']} epochs) | "
              f"{r['score_fps']:.1f} frames/s | {where} |")
    for r in rows:
        print(f"{r['method']}: per-event AUC {r['events']}; re-scored max |diff| {r['rescore_max_abs_diff']:.2e}")
    print(json.dumps({"device": str(device), "machine": where, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
