"""Stages wired together for the CLI."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vad.atomic import save_npy, write_text
from vad.config import RunConfig, ScoreConfig, to_dict
from vad.distributed import barrier, shard_clips, world
from vad.io import DATASETS, Clip, iter_frames, read_dataset
from vad.io.published import split_summary
from vad.runs import RunFolder, ScoreBook, file_digest, merge_manifest_parts
from vad.train import train, train_per_scene


def describe(clips: Sequence[Clip]) -> str:
    """One line per clip (name, kind, frames, anomalous frames); totals come from :func:`split_summary`."""
    lines = []
    for c in clips:
        lab = "" if c.labels is None else f"  anomalous {int(c.labels.sum()):5d} ({c.labels.mean():.0%})"
        scene = f"  scene {c.scene}" if c.scene else ""
        lines.append(f"  {c.name:<24} {c.kind:<6} {c.num_frames:6d} frames{scene}{lab}")
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
    scenes: Iterable[str] | None = None, decode: bool = False, frame_labels: str | None = None,
) -> dict[str, list[Clip]]:
    out = {}
    for split in splits:
        clips = read_dataset(dataset, root, split, scenes=scenes, frame_labels=frame_labels)
        out[split] = clips
        print(f"{dataset} {split} ({root}):\n{describe(clips)}\n{split_summary(dataset, split, clips, scenes)}")
        if decode:
            n, secs = decode_all(clips, desc=f"decoding {split}")
            print(f"  decoded {n} frames in {secs:.1f}s ({n / secs:.0f} frames/s); all readable")
        if dataset == "folder":
            break
    return out


def save_config(cfg: RunConfig, path: Path) -> None:
    """The resolved config as YAML, written atomically."""
    import yaml

    write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), path)


def with_data(cfg: RunConfig, root: Path | str | None = None, dataset: str | None = None,
              scenes: Sequence[str] | None = None) -> RunConfig:
    """``cfg`` with its ``data`` section filled from command-line values (those given win over the config's)."""
    d = cfg.data
    d = replace(d, root=str(Path(root).resolve()) if root is not None else d.root, dataset=dataset or d.dataset,
                scenes=tuple(scenes) if scenes else d.scenes)
    if d.root is None:
        raise ValueError("no data root: pass --data ROOT (or set data.root in the config)")
    if d.dataset is None:
        raise ValueError(f"no dataset kind: pass --dataset {{{','.join(DATASETS)}}} (or set data.dataset in the "
                         "config)")
    if d.dataset not in DATASETS:
        raise ValueError(f"data.dataset: unknown dataset {d.dataset!r}; expected one of {DATASETS}")
    return replace(cfg, data=d)


def read_split(cfg: RunConfig, split: str) -> list[Clip]:
    d = cfg.data
    return read_dataset(d.dataset, d.root, split, scenes=d.scenes, frame_labels=d.frame_labels)


def train_stage(cfg: RunConfig, out: Path, device: str = "auto") -> list[Path]:
    """Train on the normal training split of ``cfg.data``; one model, or one per scene. Saves the config."""
    clips = read_split(cfg, "train")
    out = Path(out)
    main = world().main  # under torchrun, rank 0 writes the run's files
    if main and not (out / "config.yaml").exists():  # rewritten once training succeeds (a resume may refuse it)
        save_config(cfg, out / "config.yaml")
    frames = sum(c.num_frames for c in clips)
    m = cfg.model
    role = "expert" if m.method == "mkd" else "teacher"
    note = " (offline stand-in for the paper's VGG-16)" if m.method == "mkd" and m.backbone != "vgg16" else ""
    epochs = f"{cfg.train.epochs}" + (f" + {cfg.train.disc_epochs} (discriminative)" if m.method == "rstpm" else "")
    print(f"training {m.method} ({role} {m.backbone}, {m.teacher_weights} weights{note}) on {len(clips)} clips / "
          f"{frames} frames of {cfg.data.dataset}; {epochs} epochs -> {out}")
    t0 = time.perf_counter()
    if cfg.train.per_scene:
        paths = list(train_per_scene(clips, cfg, out, device).values())
    else:
        paths = [train(clips, cfg, out, device)]
    if main:
        save_config(cfg, out / "config.yaml")
    print(f"trained {len(paths)} model(s) in {time.perf_counter() - t0:.0f}s: {', '.join(map(str, paths))}")
    return paths


def _models_for(run: Path, clips: Sequence[Clip]) -> dict[str, list[Clip]]:
    """Map each model file of ``run`` to the clips it scores (per-scene runs pick the clip's scene model)."""
    if (run / "model.pt").is_file():
        return {str(run / "model.pt"): list(clips)}
    scene_dir = run / "scenes"
    if not scene_dir.is_dir():
        raise FileNotFoundError(f"{run}: no model.pt (or scenes/<scene>/model.pt); train first with "
                                f"'vad train ... --out {run}'")
    groups: dict[str, list[Clip]] = {}
    for c in clips:
        path = scene_dir / (c.scene or "all") / "model.pt"
        if not path.is_file():
            raise FileNotFoundError(f"clip {c.name} is from scene {c.scene!r} but {path} does not exist; "
                                    f"scenes trained: {sorted(p.name for p in scene_dir.iterdir())}")
        groups.setdefault(str(path), []).append(c)
    return groups


def score_stage(run: Path, clips: Sequence[Clip], cfg: ScoreConfig, device: str = "auto",
                overwrite: bool = False) -> dict[str, np.ndarray]:
    """Score ``clips`` with the model(s) of ``run``; per-frame scores (and maps) go to ``run/scores``. Under
    ``torchrun`` every rank scores its share of whole clips and rank 0 returns everyone's merged results."""
    from vad.checkpoint import load_model
    from vad.score import Scorer, score_clips

    folder = RunFolder(run)
    w = world()
    if w.main and list(folder.root.glob("clips.rank*.json")):  # parts left by an interrupted distributed scoring
        merge_manifest_parts(folder)
    barrier()
    book, results = ScoreBook(folder, w.rank, w.world_size), {}
    for line in book.changed_sources(list(clips)) if w.main else []:
        print(line)
    for path, group in _models_for(folder.root, clips).items():
        model, ckpt = load_model(path)
        scorer = Scorer(model, ckpt, cfg, device)
        ref = Path(path).parent.name if Path(path).parent != folder.root else "all"
        # What the scores depend on besides the source: the model file, per-position standardising, the maps' grid.
        key = {"model": file_digest(Path(path)), "per_position": scorer.per_position,
               "map_stride": cfg.map_stride if cfg.save_maps else None}
        if w.main:  # the model's normal reference (hold-out frame scores, same standardising) for thresholds
            normal = ckpt["val_scores"]["per_position" if scorer.per_position else "raw"]
            save_npy(normal.numpy().astype(np.float32), folder.normal_scores(ref))
        share = shard_clips(group, w.rank, w.world_size)
        results.update(score_clips(scorer, share, folder.root, overwrite=overwrite,
                                   is_done=partial(book.is_done, scored_with=key, maps=cfg.save_maps),
                                   on_done=partial(book.record, reference=ref, scored_with=key)))
    if w.world_size > 1:
        barrier()  # every rank's scores and manifest part are written
        if w.main:
            merge_manifest_parts(folder)
            results.update({c.name: np.load(folder.scores(c.name)) for c in clips if c.name not in results})
        barrier()
    return results


PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"  # the checkout's (editable installs)
INSTALLED_PIPELINES = Path(sys.prefix) / "share" / "vad" / "pipelines"  # pyproject's data-files (any install)


def find_pipeline(name: str | Path) -> Path:
    """A pipeline YAML: a path, or the bare name of a bundled one (``campus`` -> ``pipelines/campus.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    folders = [d for d in (PIPELINES, INSTALLED_PIPELINES) if d.is_dir()]
    if path.parent == Path() and not path.suffix:
        for folder in folders:
            if (folder / f"{path.name}.yaml").is_file():
                return folder / f"{path.name}.yaml"
    have = sorted({p.stem for d in folders for p in d.glob("*.yaml")})
    raise FileNotFoundError(f"pipeline config not found: {name}; give a YAML path or one of {have}")


def run_all(cfg: RunConfig, out: Path, device: str = "auto", render_clips: Sequence[str] | None = None) -> dict:
    """Every stage on ``cfg.data``: train, score the test split, evaluate, render; returns the metrics. Re-running
    on the same folder resumes: training from its last checkpoint (a finished one only redoes the hold-out pass),
    scoring from the clips not yet scored by the current model."""
    from vad.evaluate import evaluate_run
    from vad.render import render_run

    out = Path(out)
    # Everything that can be checked before hours of training (settings were checked as the config loaded): the
    # test split, the clips to render.
    test = read_split(cfg, "test")
    missing = sorted(set(render_clips or ()) - {c.name for c in test})
    if missing:
        raise ValueError(f"--clip {missing}: not in the test split of {cfg.data.root}; it has "
                         f"{sorted(c.name for c in test)}")
    t0 = time.perf_counter()
    train_stage(cfg, out, device)
    t1 = time.perf_counter()
    score_stage(out, test, cfg.score, device=device)
    t2 = time.perf_counter()
    if not world().main:  # rank 0 evaluates and renders
        return {}
    metrics = evaluate_run(out, cfg.postprocess, cfg.eval)
    t3 = time.perf_counter()
    videos = render_run(out, cfg.postprocess, cfg.eval, cfg.render, clips=render_clips)
    t4 = time.perf_counter()
    print(f"pipeline done in {t4 - t0:.0f}s (train {t1 - t0:.0f}s, score {t2 - t1:.0f}s, evaluate {t3 - t2:.0f}s, "
          f"render {t4 - t3:.0f}s)\n  metrics: {out / 'metrics.json'}\n  events:  {out / 'events.csv'}\n"
          f"  plots:   {out / 'plots'}\n  videos:  {out / 'videos'} ({len(videos)} MP4s)")
    return metrics


def run_demo(out: Path, seed: int = 0, device: str = "auto", overrides: Sequence[str] = ()) -> dict:
    """Generate the synthetic scene under ``out/data`` (reused if already there) and run ``pipelines/demo.yaml``
    on it with ``out`` as the run folder."""
    from vad.config import load_config
    from vad.synthetic import SceneConfig, generate_scene

    out = Path(out)
    data = out / "data"
    cfg = load_config(find_pipeline("demo"), list(overrides))
    t0 = time.perf_counter()
    if (data / "scene.json").exists():
        print(f"demo scene: reusing {data}")
    else:
        summary = generate_scene(data, SceneConfig(seed=seed))
        print(f"demo scene: generated {summary['train_frames']} training and {summary['test_frames']} test frames "
              f"in {time.perf_counter() - t0:.1f}s -> {data}")
    metrics = run_all(with_data(cfg, root=data, dataset="shanghaitech"), out, device)
    print(f"demo finished in {time.perf_counter() - t0:.0f}s: frame AUC micro {metrics['frame_auc_micro']:.3f}, "
          f"macro {metrics['frame_auc_macro']:.3f}; watch {out / 'videos'}/*.mp4")
    return metrics
