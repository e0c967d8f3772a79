"""Refit a finished run's final model with today's code: the speed cue's rows and the normal reference, from the
run's own best checkpoint and training data (the network is not retrained).

    python benchmarks/refit.py --run RUN --data ROOT

Training's last step (vad.offline.train._finalise) rebuilds the best-validation model, fits the speed cue's rows on the
normal training frames and the normal reference on the hold-out, and writes RUN/model.pt. This script moves
RUN/model.pt to RUN/model.pt.old and resumes the finished run, so that only that step runs again: used to measure a
change to the fitted statistics (docs/methods.md, "Speed") on models trained before it. Then score again
(``vad score --run RUN --overwrite``) and evaluate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vad.config import load_config
from vad.io import read_dataset
from vad.offline.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", required=True, help="the dataset root the run was trained on")
    args = p.parse_args()
    if not (args.run / "checkpoints").is_dir() or not (args.run / "model.pt").is_file():
        raise SystemExit(f"error: {args.run} has no checkpoints/ or model.pt: not a run that vad train finished")
    cfg = load_config(str(args.run / "config.yaml"), saved=True)
    clips = read_dataset(cfg.data.dataset, args.data, "train")
    (args.run / "model.pt").replace(args.run / "model.pt.old")
    t0 = time.perf_counter()
    train(clips, cfg, args.run, "cpu", progress=False)
    print(f"refitted {args.run / 'model.pt'} in {time.perf_counter() - t0:.0f} s (the old one: model.pt.old)")


if __name__ == "__main__":
    main()
