"""Stages wired together for the CLI."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vad.io import Clip, iter_frames, read_dataset


def describe(clips: Sequence[Clip]) -> str:
    """One line per clip and a total: name, kind, frames, anomalous frames."""
    lines = []
    for c in clips:
        lab = "" if c.labels is None else f"  anomalous {int(c.labels.sum()):5d} ({c.labels.mean():.0%})"
        scene = f"  scene {c.scene}" if c.scene else ""
        lines.append(f"  {c.name:<24} {c.kind:<6} {c.num_frames:6d} frames{scene}{lab}")
    total = sum(c.num_frames for c in clips)
    labelled = [c for c in clips if c.labels is not None]
    tail = f", {sum(int(c.labels.sum()) for c in labelled)} anomalous" if labelled else ""
    lines.append(f"  {len(clips)} clips, {total} frames{tail}")
    return "\n".join(lines)


def decode_all(clips: Sequence[Clip], desc: str = "decoding") -> tuple[int, float]:
    """Decode every frame of ``clips`` (checks they are readable); return (frames, seconds)."""
    t0, n = time.perf_counter(), 0
    with tqdm(total=sum(c.num_frames for c in clips), desc=desc, unit="frame", leave=False) as bar:
        for clip in clips:
            for _, frames in iter_frames(clip):
                n += len(frames)
                bar.update(len(frames))
    return n, time.perf_counter() - t0


def inspect_dataset(
    root: Path, dataset: str, splits: Iterable[str] = ("train", "test"),
    scenes: Iterable[str] | None = None, decode: bool = False,
) -> dict[str, list[Clip]]:
    out = {}
    for split in splits:
        clips = read_dataset(dataset, root, split, scenes=scenes)
        out[split] = clips
        print(f"{dataset} {split} ({root}):\n{describe(clips)}")
        if decode:
            n, secs = decode_all(clips, desc=f"decoding {split}")
            print(f"  decoded {n} frames in {secs:.1f}s ({n / secs:.0f} frames/s); all readable")
        if dataset == "folder":
            break
    return out


def run_demo(out: Path, seed: int = 0) -> None:
    """Generate the synthetic scene under ``out/data`` (reused if already there) and check it end to end."""
    from vad.synthetic import SceneConfig, generate_scene

    data = Path(out) / "data"
    t0 = time.perf_counter()
    if (data / "scene.json").exists():
        print(f"demo scene: reusing {data}")
    else:
        summary = generate_scene(data, SceneConfig(seed=seed))
        print(f"demo scene: generated {summary['train_frames']} training and {summary['test_frames']} test frames "
              f"in {time.perf_counter() - t0:.1f}s -> {data}")
    clips = inspect_dataset(data, "shanghaitech", decode=True)
    test = clips["test"]
    frac = np.concatenate([c.labels for c in test]).mean()
    print(f"demo data ready: {len(clips['train'])} training videos, {len(test)} labelled test clips "
          f"({frac:.0%} anomalous frames) in {data}")
