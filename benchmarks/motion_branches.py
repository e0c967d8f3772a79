#!/usr/bin/env python3
"""Ablate a trained motion run (``MotionSTPM``): frame AUC of each branch and each way of fusing them, from one
scoring pass, on one or more ShanghaiTech-layout test sets.

Rows (raw per-frame scores: no smoothing, no per-clip normalisation; every statistic from normal hold-out frames):

- ``appearance``: STPM alone (the appearance student's map);
- ``motion`` / ``motion 3x3``: the future-feature predictor alone, its map as is / averaged over 3 x 3 cells
  (``model.motion_pool``);
- ``motion finest`` / ``motion finest 3x3``: when the predictor predicts every level (``model.motion_levels=all``),
  its finest level alone (what ``model.motion_levels=finest`` scores; that setting trains only this level's
  predictor, which is separate from the others', so the row measures it without training again);
- ``fused sum`` / ``fused max`` of each motion row: both maps, each standardised by the mean and deviation of its
  frame scores on the hold-out, summed / maximum, then the frame's maximum: exactly what the model scores with
  ``model.fusion``, ``model.motion_pool`` and ``model.motion_levels`` set so;
- ``feature-diff``: a training-free motion candidate, the teacher's own change between frames ``t - 1`` and ``t``
  (the same per-level discrepancy as STPM's, combined the same way), fused with appearance by a sum, as above.

    python benchmarks/motion_branches.py --run runs/campus --data /tmp/campus /tmp/campus-motion

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vad.io import read_dataset
from vad.io.dataset import FrameStream, FrameTransform
from vad.metrics import event_aucs, micro_auc
from vad.models import MotionSTPM, frame_scores
from vad.models.motion import pool_map
from vad.runtime.checkpoint import load_model
from vad.runtime.reference import holdout


def motion_maps(model: MotionSTPM, past_t: list[dict], t: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The motion candidates' maps: the model's levels, and its finest level alone when it predicts more."""
    size = model.map_size(x)
    pred = model.predictor(past_t)
    levels = {"motion": list(pred)}
    if len(pred) > 1:
        levels["motion finest"] = list(pred)[:1]
    out = {}
    for name, keys in levels.items():
        m = model.pyramids_to_map({k: t[k] for k in keys}, {k: pred[k] for k in keys}, size).float()
        out[name], out[f"{name} 3x3"] = m, pool_map(m, 3)
    return out


@torch.no_grad()
def branch_scores(model: MotionSTPM, stream: FrameStream, stats: dict | None = None) -> dict[str, np.ndarray]:
    """Raw frame scores per branch (and, given hold-out ``stats`` ``{branch: (mean, sd)}``, per fusion), in stream
    order, with clip names and frame indices."""
    out: dict[str, list] = {"clip": [], "index": []}
    for batch in stream:
        x = batch["frames"]
        past_t, t = model.teacher_features(x)
        maps = {"appearance": model.pyramids_to_map(t, model.student(x[:, -3:]), model.map_size(x)).float(),
                **motion_maps(model, past_t, t, x),
                "feature-diff": model.pyramids_to_map(t, past_t[-1], model.map_size(x)).float()}
        rows = {k: frame_scores(m) for k, m in maps.items()}
        if stats is not None:
            z = {k: (m - stats[k][0]) / stats[k][1] for k, m in maps.items()}
            for k in z:
                if k.startswith("motion"):
                    rows[f"fused sum, {k}"] = frame_scores(z["appearance"] + z[k])
                    rows[f"fused max, {k}"] = frame_scores(torch.maximum(z["appearance"], z[k]))
            rows["appearance + feature-diff"] = frame_scores(z["appearance"] + z["feature-diff"])
        for k, v in rows.items():
            out.setdefault(k, []).append(v.numpy())
        out["clip"] += batch["clip"]
        out["index"].append(batch["index"].numpy())
    return {k: (np.concatenate(v) if k != "clip" else np.array(v)) for k, v in out.items()}


def per_clip(scores: np.ndarray, rows: dict, clips) -> dict[str, np.ndarray]:
    res = {}
    for c in clips:
        sel = rows["clip"] == c.name
        arr = np.empty(c.num_frames, np.float32)
        arr[rows["index"][sel]] = scores[sel]
        res[c.name] = arr
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a run folder with a motion model (model.pt)")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="ShanghaiTech-layout roots to score")
    p.add_argument("--train-data", type=Path, default=None, help="the training root (default: the first --data)")
    args = p.parse_args(argv)
    model, ckpt = load_model(args.run / "model.pt")
    if not isinstance(model, MotionSTPM):
        raise SystemExit(f"error: {args.run / 'model.pt'} is not a motion model (model.motion)")
    transform = FrameTransform(tuple(ckpt["input_size"]), ckpt["normalization"])
    val_frac = ckpt["config"]["train"]["val_fraction"]
    train_clips = read_dataset("shanghaitech", args.train_data or args.data[0], "train")
    _, val = holdout(train_clips, val_frac)
    ref = branch_scores(model, FrameStream(train_clips, transform, batch_size=16, ranges=val, window=model.window))
    stats = {k: (float(ref[k].mean()), float(ref[k].std(ddof=1))) for k in ref if k not in ("clip", "index")}

    result = {"run": str(args.run), "trained_with": {"fusion": model.fusion, "motion_pool": model.pool,
                                                "motion_levels": model.motion_levels},
              "hold_out_stats": stats, "sets": {}}
    for root in args.data:
        clips = read_dataset("shanghaitech", root, "test")
        rows = branch_scores(model, FrameStream(clips, transform, batch_size=16, window=model.window), stats)
        variants = {k: v for k, v in rows.items() if k not in ("clip", "index", "feature-diff")}
        labels = {c.name: c.labels for c in clips}
        table = {}
        for name, scores in variants.items():
            by_clip = per_clip(scores, rows, clips)
            table[name] = {"micro": round(micro_auc(by_clip, labels), 4),
                           "events": {k: round(v, 3) for k, v in event_aucs(by_clip, labels).items()}}
        result["sets"][str(root)] = table
        print(f"\n{root} (raw micro AUC; per event: its frames against all normal frames)")
        for name, row in table.items():
            print(f"  {name:33s} {row['micro']:.4f}   events " + " ".join(f"{v:.2f}" for v in row["events"].values()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
