"""The speed cue alone (no network), its settings side by side: DIS settings, cell size, the rows' reference.

    python benchmarks/speed_cue.py --data ROOT --dataset ped2 [--height 240] [--json out.json]

Reads the dataset's training clips (normal) and labelled test clips, resizes frames to the model's input size
(``--height``, the aspect kept, a multiple of 16, as the pipelines do), and for each setting computes every frame's
cell speeds (vad.models.speed.cell_speed, at map stride 8). Scores: the frame's largest cell speed, raw ("no rows":
the training-free cue) or divided by its row's reference fitted on the training frames (the shipped cue). Prints raw
micro frame AUC and per-clip AUC, and the flow's milliseconds per frame on one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from vad.io import iter_frames, read_dataset
from vad.io.dataset import FrameTransform
from vad.metrics import clip_aucs, micro_auc
from vad.models import speed as sp

PRESETS = {  # finest scale, patch size, patch stride, gradient descent iterations, variational refinement iterations
    "shipped (fast, finest scale 1)": (1, 8, 4, 16, 5),
    "DIS medium preset": (1, 8, 3, 25, 5),
    "DIS fast preset (finest scale 2)": (2, 8, 4, 16, 5),
    "DIS ultrafast preset": (2, 8, 5, 16, 0),
    "shipped without variational refinement": (1, 8, 4, 16, 0),
    "shipped, 1 variational refinement iteration": (1, 8, 4, 16, 1),
    "shipped, 2 variational refinement iterations": (1, 8, 4, 16, 2),
    "shipped, 8 gradient descent iterations": (1, 8, 4, 8, 5),
    "shipped, patch stride 6": (1, 8, 6, 16, 5),
}
STRIDE = 8


def grey_frames(clip, size: tuple[int, int]) -> np.ndarray:
    """A clip's frames resized as the scorer resizes them, grey (the mean of the channels), uint8 ``(T, H, W)``."""
    resize = FrameTransform(size, "none").resized
    return np.concatenate([resize(batch).float().mean(1).round_().clamp_(0, 255).to(torch.uint8).numpy()
                           for _, batch in iter_frames(clip)])


def speeds(frames: np.ndarray, preset: tuple, cells: int) -> tuple[np.ndarray, float]:
    dis = sp.make_flow()
    for setter, v in zip(("setFinestScale", "setPatchSize", "setPatchStride", "setGradientDescentIterations",
                          "setVariationalRefinementIterations"), preset, strict=True):
        getattr(dis, setter)(v)
    size = (frames.shape[1] // STRIDE, frames.shape[2] // STRIDE)
    t0 = time.perf_counter()
    out = np.stack([sp.cell_speed(dis, None if t == 0 else frames[t - 1], frames[t], size, cells)
                    for t in range(len(frames))])
    return out, (time.perf_counter() - t0) / len(frames) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    cv2.setNumThreads(1)
    train = read_dataset(args.dataset, args.data, "train")
    test = [c for c in read_dataset(args.dataset, args.data, "test") if c.labels is not None]
    first = next(iter_frames(train[0], batch_size=1))[1]
    h = args.height
    w = max(16, int(round(first.shape[-1] * h / first.shape[-2] / 16)) * 16)
    grey = {c.name: grey_frames(c, (h, w)) for c in [*train, *test]}
    labels = {c.name: np.asarray(c.labels) for c in test}
    results = {}
    settings = [(name, preset, 24) for name, preset in PRESETS.items()]
    settings += [(f"shipped, {cell}-px cells", PRESETS["shipped (fast, finest scale 1)"], cell) for cell in (8, 40)]
    for name, preset, cell in settings:
        cue = sp.SpeedCue(cell, STRIDE)
        ms, per = [], {}
        for c in [*train, *test]:
            per[c.name], t = speeds(grey[c.name], preset, cue.cells)
            ms.append(t)
        cue.fit_rows(np.concatenate([per[c.name] for c in train]))
        per = {n: np.nan_to_num(v) for n, v in per.items()}  # alone, a first frame (no past) scores no speed, 0
        for rows in (False, True):
            if rows:
                scores = {n: cue.relative(torch.from_numpy(per[n])).flatten(1).amax(1).numpy() for n in labels}
            else:
                scores = {n: per[n].reshape(len(per[n]), -1).max(1) for n in labels}
            key = f"{name}, {'rows' if rows else 'no rows'}"
            results[key] = {"micro": micro_auc(scores, labels), "per_clip": clip_aucs(scores, labels),
                            "ms_per_frame": float(np.mean(ms))}
            print(f"| {key} | {results[key]['micro']:.4f} | "
                  + " | ".join("-" if v is None else f"{v:.3f}" for v in results[key]["per_clip"].values())
                  + f" | {results[key]['ms_per_frame']:.1f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
