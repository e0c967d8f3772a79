#!/usr/bin/env python3
"""Generate the synthetic demo scene (ShanghaiTech layout) with a given seed and size."""

import argparse
import json
from pathlib import Path

from vad.offline.synthetic import SceneConfig, generate_scene

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "dataset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-clips", type=int, default=SceneConfig.test_clips)
    p.add_argument("--train-videos", type=int, default=SceneConfig.train_videos)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args()
    cfg = SceneConfig(seed=a.seed, test_clips=a.test_clips, train_videos=a.train_videos)
    print(json.dumps(generate_scene(a.out, cfg, overwrite=a.overwrite), indent=2))
