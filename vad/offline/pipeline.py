"""Stages wired together for the CLI: each stage one call down (preparing and opening a model:
:mod:`vad.runtime.prepare`, :mod:`vad.runtime.open`)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from vad.atomic import write_text
from vad.config import RunConfig, load_config, to_dict
from vad.distributed import barrier, shard_clips, world
from vad.errors import ConfigError, UsageError
from vad.io import DATASETS, Clip, iter_frames, read_dataset
from vad.io.decode import first_frame, looks_grey
from vad.io.published import split_summary
from vad.io.research import describe_layout
from vad.offline.evaluate import evaluate_run
from vad.offline.render import render_run
from vad.offline.synthetic import SceneConfig, generate_scene
from vad.offline.train import train, train_per_scene
from vad.progress import progress_bar
from vad.runs import RunFolder, RunFolderError, ScoreBook, merge_manifest_parts
from vad.runtime.batches import score_clips
from vad.runtime.prepare import exported_model, prepare_model, training_clips
from vad.runtime.quantize import make_variant, missing
from vad.runtime.reference import holdout

log = logging.getLogger(__name__)


def describe_clips(clips: Sequence[Clip]) -> str:
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
    with progress_bar(total=sum(c.num_frames for c in clips), desc=desc, unit="frame", leave=False) as bar:
        for clip in clips:
            for _, frames in iter_frames(clip):
                n += len(frames)
                bar.update(len(frames))
    return n, time.perf_counter() - t0


def inspect_dataset(
    root: Path, dataset: str, splits: Iterable[str] = ("train", "test"),
    scenes: Iterable[str] | None = None, decode: bool = False, frame_labels: str | None = None,
) -> dict[str, list[Clip]]:
    """Read each split of ``dataset`` at ``root`` and log its layout (original archive or research), its clips and
    its counts against the published ones (a warning where they differ); with ``decode``, decode every frame."""
    layout = describe_layout(dataset, root)
    out = {}
    for split in splits:
        clips = read_dataset(dataset, root, split, scenes=scenes, frame_labels=frame_labels)
        if not out and layout is not None:  # once the root has read
            log.info(f"{dataset} layout: {layout}")
        out[split] = clips
        summary = split_summary(dataset, split, clips, scenes)
        log.info(f"{dataset} {split} ({root}):\n{describe_clips(clips)}\n{summary}")
        if decode:
            n, secs = decode_all(clips, desc=f"decoding {split}")
            log.info(f"  decoded {n} frames in {secs:.1f}s ({n / secs:.0f} frames/s); all readable")
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
        raise UsageError("no data root: pass --data ROOT (or set data.root in the config)")
    if d.dataset is None:
        raise UsageError(f"no dataset kind: pass --dataset {{{','.join(DATASETS)}}} (or set data.dataset in the "
                         "config)")
    if d.dataset not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {d.dataset!r}; expected one of {DATASETS}")
    return replace(cfg, data=d)


def read_split(cfg: RunConfig, split: str) -> list[Clip]:
    d = cfg.data
    return read_dataset(d.dataset, d.root, split, scenes=d.scenes, frame_labels=d.frame_labels)


def train_stage(cfg: RunConfig, out: Path, device: str = "auto") -> list[Path]:
    """Train on the normal training split of ``cfg.data``; one model, or one per scene. Saves the config."""
    clips = read_split(cfg, "train")
    run = RunFolder(out)
    main = world().main  # under torchrun, rank 0 writes the run's files
    if main and not run.config.exists():  # rewritten once training succeeds (a resume may refuse it)
        save_config(cfg, run.config)
    frames = sum(c.num_frames for c in clips)
    m = cfg.model
    role = "expert" if m.method == "mkd" else "teacher"
    note = " (offline stand-in for the paper's VGG-16)" if m.method == "mkd" and m.backbone != "vgg16" else ""
    epochs = f"{cfg.train.epochs}" + (f" + {cfg.train.disc_epochs} (discriminative)" if m.method == "rstpm" else "")
    log.info(f"training {m.method} ({role} {m.backbone}, {m.teacher_weights} weights{note}) on {len(clips)} clips / "
             f"{frames} frames of {cfg.data.dataset}; {epochs} epochs -> {out}")
    t0 = time.perf_counter()
    if cfg.train.per_scene:
        paths = list(train_per_scene(clips, cfg, out, device).values())
    else:
        paths = [train(clips, cfg, out, device)]
    if main:
        save_config(cfg, run.config)
    log.info(f"trained {len(paths)} model(s) in {time.perf_counter() - t0:.0f}s: {', '.join(map(str, paths))}")
    return paths


def _clips_by_model(run: RunFolder, clips: Sequence[Clip]) -> dict[str, list[Clip]]:
    """``{model scope: clips it scores}``: the run's model, or per-scene runs' the clip's scene's."""
    models = run.model_files()
    if not models:
        raise RunFolderError(f"{run.root}: no model.pt (or scenes/<scene>/model.pt); train first with "
                             f"'vad train ... --out {run.root}'")
    if "all" in models and not run.scenes.is_dir():
        return {"all": list(clips)}
    groups: dict[str, list[Clip]] = {}
    for c in clips:
        scene = c.scene or "all"
        if scene not in models:
            raise RunFolderError(f"clip {c.name} is from scene {scene!r} but {run.scene(scene).model} does not exist; "
                                 f"scenes trained: {sorted(models)}")
        groups.setdefault(scene, []).append(c)
    return groups


def _colour_notes(clips: Sequence[Clip], colour: bool | None) -> list[str]:
    """A note for each clip whose footage is greyscale where the model was trained on colour, or the reverse."""
    if colour is None:  # a model written before vad recorded it
        return []
    notes = []
    for c in clips:
        grey = looks_grey(first_frame(c))
        if grey == colour:
            trained = "colour" if colour else "greyscale"
            notes.append(f"note: clip {c.name} is {'greyscale' if grey else 'colour'} footage and the model was "
                         f"trained on {trained}: its scores are not comparable with the training footage's (grey "
                         f"frames scored about 20x higher than the same frames in colour on campus); train on "
                         f"footage like it")
    return notes


def score_stage(run: Path, clips: Sequence[Clip], cfg: RunConfig, device: str = "auto",
                overwrite: bool = False) -> dict[str, np.ndarray]:
    """Score ``clips`` with the model(s) of ``run`` under ``cfg.score`` and the scoring settings of ``cfg.model``
    (:data:`vad.config.SCORING`) into ``run/scores``, named so that no source's results overwrite another's. Under
    ``torchrun`` every rank scores its share of whole clips and rank 0 returns everyone's merged results."""
    folder = RunFolder(run)
    w = world()
    if w.main and folder.rank_parts() and not overwrite:  # parts left by an interrupted distributed scoring
        merge_manifest_parts(folder)
    barrier()
    book, results = ScoreBook(folder, w.rank, w.world_size, fresh=overwrite), {}
    clips, renames = book.names(list(clips))
    for line in [*renames, *book.changed_sources(clips)] if w.main else []:
        log.info(line)
    for scope, group in _clips_by_model(folder, clips).items():

        def pending(key: dict, group: list[Clip] = group) -> list[Clip]:  # not yet scored by this model and setting
            return [c for c in group if overwrite or not book.is_done(c, key, cfg.score.save_maps)]

        def frames(key: dict, pending=pending) -> int:
            return sum(c.num_frames for c in pending(key))

        opened = prepare_model(folder, cfg, device, scope=scope, frames=frames)  # prepared, and open
        for line in _colour_notes(pending(opened.key), opened.ckpt.get("colour")) if w.main else []:
            log.info(line)
        share = shard_clips(group, w.rank, w.world_size)
        results.update(score_clips(opened.scorer, share, folder, overwrite=overwrite,
                                   is_done=partial(book.is_done, scored_with=opened.key, maps=cfg.score.save_maps),
                                   on_done=partial(book.record, reference=opened.reference_name,
                                                   scored_with=opened.key, backend=opened.backend)))
    if w.world_size > 1:
        barrier()  # every rank's scores and manifest part are written
        if w.main:
            merge_manifest_parts(folder)
            results.update({c.name: np.load(folder.scores(c.name)) for c in clips if c.name not in results})
        barrier()
    return results


def export_stage(run: Path, cfg: RunConfig, formats: tuple[str, ...], device: str = "cpu",
                 copies: tuple[str, ...] = ()) -> list[tuple[Path, dict]]:
    """Export every model of ``run`` under the scoring settings of ``cfg.model``, with the lower-precision ``copies``;
    returns the folders written (or already there), each with its copies' checks ``{variant: Check}``."""
    for variant in copies:  # before any long work
        if (reason := missing(variant)) is not None:
            raise UsageError(reason)
    folder = RunFolder(run)
    out = []
    for scope in folder.model_files() or [None]:  # none: prepare_model says so
        opened = prepare_model(folder, cfg, device, scope=scope, backend="torch")  # the normal reference
        export = exported_model(folder, opened.reference_name, opened.scorer.model, opened.ckpt, opened.reference,
                                formats)
        checks = {}
        if copies:
            clips, ranges = training_clips(cfg, opened.ckpt)
            train, val = holdout(clips, opened.ckpt["config"]["train"]["val_fraction"], ranges)
            for variant in copies:
                checks[variant] = make_variant(variant, opened.scorer, opened.reference, export,
                                               clips, train, val, cfg.eval.threshold_percentile)
        out.append((export, checks))
    return out


PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"  # the checkout's (editable installs)
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
    out = Path(out)
    # before hours of training, what loading the config did not check: the test split, the clips to render
    test = read_split(cfg, "test")
    missing = sorted(set(render_clips or ()) - {c.name for c in test})
    if missing:
        raise UsageError(f"--clip {missing}: not in the test split of {cfg.data.root}; it has "
                         f"{sorted(c.name for c in test)}")
    t0 = time.perf_counter()
    train_stage(cfg, out, device)
    t1 = time.perf_counter()
    score_stage(out, test, cfg, device=device)
    t2 = time.perf_counter()
    if not world().main:  # rank 0 evaluates and renders
        return {}
    metrics = evaluate_run(out, cfg.postprocess, cfg.eval)
    t3 = time.perf_counter()
    videos = render_run(out, cfg.postprocess, cfg.eval, cfg.render, clips=render_clips)
    t4 = time.perf_counter()
    log.info(f"pipeline done in {t4 - t0:.0f}s (train {t1 - t0:.0f}s, score {t2 - t1:.0f}s, evaluate {t3 - t2:.0f}s, "
             f"render {t4 - t3:.0f}s)\n  metrics: {out / 'metrics.json'}\n  events:  {out / 'events.csv'}\n"
             f"  plots:   {out / 'plots'}\n  videos:  {out / 'videos'} ({len(videos)} MP4s)")
    return metrics


def run_demo(out: Path, seed: int = 0, device: str = "auto", overrides: Sequence[str] = ()) -> dict:
    """Generate the synthetic scene under ``out/data`` (reused if already there) and run ``pipelines/demo.yaml``
    on it with ``out`` as the run folder."""
    out = Path(out)
    data = out / "data"
    cfg = load_config(find_pipeline("demo"), list(overrides))
    t0 = time.perf_counter()
    if (data / "scene.json").exists():
        log.info(f"demo scene: reusing {data}")
    else:
        summary = generate_scene(data, SceneConfig(seed=seed))
        log.info(f"demo scene: generated {summary['train_frames']} training and {summary['test_frames']} test frames "
                 f"in {time.perf_counter() - t0:.1f}s -> {data}")
    metrics = run_all(with_data(cfg, root=data, dataset="shanghaitech"), out, device)
    log.info(f"demo finished in {time.perf_counter() - t0:.0f}s: frame AUC micro {metrics['frame_auc_micro']:.3f}, "
             f"macro {metrics['frame_auc_macro']:.3f}; watch {out / 'videos'}/*.mp4\n"
             f"  review: {RunFolder(out).review_page} (vad review --run {out} to mark events)")
    return metrics
