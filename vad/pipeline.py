"""Stages wired together for the CLI."""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vad.atomic import write_text
from vad.config import RunConfig, to_dict
from vad.distributed import barrier, shard_clips, world
from vad.errors import ConfigError, UsageError, VadError
from vad.export import Runtime, choose_backend, export_model, exported, fastest_backend
from vad.io import DATASETS, Clip, iter_frames, read_dataset
from vad.io.published import split_summary
from vad.reference import NormalReference, apply_state, reference_id, reference_state
from vad.runs import RunFolder, RunFolderError, ScoreBook, file_digest, merge_manifest_parts
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
    print(f"training {m.method} ({role} {m.backbone}, {m.teacher_weights} weights{note}) on {len(clips)} clips / "
          f"{frames} frames of {cfg.data.dataset}; {epochs} epochs -> {out}")
    t0 = time.perf_counter()
    if cfg.train.per_scene:
        paths = list(train_per_scene(clips, cfg, out, device).values())
    else:
        paths = [train(clips, cfg, out, device)]
    if main:
        save_config(cfg, run.config)
    print(f"trained {len(paths)} model(s) in {time.perf_counter() - t0:.0f}s: {', '.join(map(str, paths))}")
    return paths


def _models_for(run: RunFolder, clips: Sequence[Clip]) -> dict[str, tuple[Path, list[Clip]]]:
    """``{reference scope: (model file, clips it scores)}``: the run's model, or per-scene runs' the clip's scene's."""
    models = run.model_files()
    if not models:
        raise RunFolderError(f"{run.root}: no model.pt (or scenes/<scene>/model.pt); train first with "
                             f"'vad train ... --out {run.root}'")
    if "all" in models and not run.scenes.is_dir():
        return {"all": (models["all"], list(clips))}
    groups: dict[str, tuple[Path, list[Clip]]] = {}
    for c in clips:
        scene = c.scene or "all"
        if scene not in models:
            raise RunFolderError(f"clip {c.name} is from scene {scene!r} but {run.scene(scene).model} does not exist; "
                                 f"scenes trained: {sorted(models)}")
        groups.setdefault(scene, (models[scene], []))[1].append(c)
    return groups


def _colour_notes(clips: Sequence[Clip], colour: bool | None) -> list[str]:
    """A note for each clip whose footage is greyscale where the model was trained on colour, or the reverse."""
    from vad.io.decode import first_frame, looks_grey

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
    (:data:`vad.config.SCORING`); per-frame scores (and maps) go to ``run/scores``. Clips are named so that no
    source's results overwrite another's (:func:`vad.runs.assign_names`). Under ``torchrun`` every rank scores its
    share of whole clips and rank 0 returns everyone's merged results."""
    from vad.checkpoint import load_model
    from vad.score import Scorer, score_clips

    folder = RunFolder(run)
    w = world()
    if w.main and folder.rank_parts() and not overwrite:  # parts left by an interrupted distributed scoring
        merge_manifest_parts(folder)
    barrier()
    book, results = ScoreBook(folder, w.rank, w.world_size, fresh=overwrite), {}
    clips, renames = book.names(list(clips))
    for line in [*renames, *book.changed_sources(clips)] if w.main else []:
        print(line)
    for scope, (path, group) in _models_for(folder, clips).items():
        model, ckpt = load_model(path, cfg.model.scoring())
        scorer = Scorer(model, ckpt, cfg.score, device)
        name, ref = normal_reference(folder, scope, path, scorer, ckpt, cfg)
        key = _key(ref, scorer, cfg)
        todo = group if overwrite else [c for c in group if not book.is_done(c, key, cfg.score.save_maps)]
        have = exported(folder.export(name), ref.model)
        backend = choose_backend(cfg.score.backend, model, scorer.device, sum(c.num_frames for c in todo), have)
        if backend != "torch":
            backend = use_backend(scorer, folder, name, ckpt, ref, backend, cfg.score.backend == "auto")
        for line in _colour_notes(todo, ckpt.get("colour")) if w.main else []:
            print(line)
        share = shard_clips(group, w.rank, w.world_size)
        results.update(score_clips(scorer, share, folder, overwrite=overwrite,
                                   is_done=partial(book.is_done, scored_with=key, maps=cfg.score.save_maps),
                                   on_done=partial(book.record, reference=name, scored_with=key, backend=backend)))
    if w.world_size > 1:
        barrier()  # every rank's scores and manifest part are written
        if w.main:
            merge_manifest_parts(folder)
            results.update({c.name: np.load(folder.scores(c.name)) for c in clips if c.name not in results})
        barrier()
    return results


def _key(ref: NormalReference, scorer, cfg: RunConfig) -> dict:
    """What a clip's scores depend on besides its source: the model file, its scoring settings, per-position
    standardising, the maps' grid."""
    return {"model": ref.model, "scoring": ref.settings, "per_position": scorer.per_position,
            "map_stride": cfg.score.map_stride if cfg.score.save_maps else None}


def export_stage(run: Path, cfg: RunConfig, formats: tuple[str, ...], device: str = "cpu") -> list[Path]:
    """Export every model of ``run`` under the scoring settings of ``cfg.model`` (:mod:`vad.export`); returns the
    folders written (or already there for the same model and settings)."""
    from vad.checkpoint import load_model
    from vad.score import Scorer

    folder, out = RunFolder(run), []
    models = folder.model_files()
    if not models:
        raise RunFolderError(f"{folder.root}: no model.pt (or scenes/<scene>/model.pt); train first")
    for scope, path in models.items():
        model, ckpt = load_model(path, cfg.model.scoring())
        scorer = Scorer(model, ckpt, cfg.score, device)
        name, ref = normal_reference(folder, scope, path, scorer, ckpt, cfg)
        out.append(exported_model(folder, name, model, ckpt, ref, formats))
    return out


def exported_model(run: RunFolder, name: str, model, ckpt: dict, ref: NormalReference,
                   formats: tuple[str, ...] = ("onnx",)) -> Path:
    """The folder of the model exported under reference ``name``'s settings: made once (rank 0), then reused."""
    folder = run.export(name)
    have_ir = "openvino" not in formats or (folder / "model.xml").is_file()
    if world().main and not (exported(folder, ref.model) and have_ir):
        print(f"exporting the model ({name}) to {', '.join(formats)} -> {folder}")
        export_model(copy.deepcopy(model), ckpt, ref, folder, formats)
    barrier()
    return folder


def use_backend(scorer, run: RunFolder, name: str, ckpt: dict, ref: NormalReference, backend: str,
                choose: bool) -> str:
    """Score with ``scorer``'s model exported (:func:`exported_model`) and run by ``backend``, or with ``choose``
    by the backend measured fastest on this machine (torch or a runtime: :func:`vad.export.fastest_backend`, one
    batch of the scorer's size through the scorer); returns the backend used."""
    folder = exported_model(run, name, scorer.model, ckpt, ref)
    made: dict[str, Runtime | None] = {"torch": None}
    if choose:
        x = torch.zeros(scorer.cfg.batch_size, 3, *ckpt["input_size"])

        def measure(b: str) -> float:
            scorer.use(made.setdefault(b, None if b == "torch" else Runtime(b, folder)))
            return scorer.frames_per_second(x)

        precision = str(scorer.dtype or torch.float32).removeprefix("torch.")
        backend, speeds, measured = fastest_backend(folder, measure, f"batch {len(x)}, torch {precision}")
        if world().main and measured:
            print(f"measured on this machine: {', '.join(f'{b} {v:.1f}' for b, v in speeds.items())} frames/s; "
                  f"scoring with {backend}")
    scorer.use(made[backend] if backend in made else Runtime(backend, folder))
    return backend


def normal_reference(run: RunFolder, scope: str, path: Path, scorer, ckpt: dict, cfg: RunConfig
                     ) -> tuple[str, NormalReference]:
    """``(name, reference)``: the normal reference of model ``path`` under the scorer's settings, with its
    statistics applied to the scorer's model: the checkpoint's own for the trained settings, else one saved in the
    run folder, else fitted on the hold-out of the model's training clips (read again from ``cfg.data``). Rank 0
    saves it in the run folder."""
    from vad.checkpoint import trained_model_config

    model = scorer.model
    settings = cfg.model.scoring()
    digest = file_digest(path)
    name = reference_id(scope, digest, settings, scorer.per_position)
    kind = "per_position" if scorer.per_position else "raw"
    saved = run.normal_scores(name)
    if settings == trained_model_config(ckpt).scoring():
        ref = NormalReference(ckpt["val_scores"][kind].numpy().astype(np.float64), settings, scorer.per_position,
                              reference_state(model), digest, model.branches)
    elif saved.is_file() and saved.suffix == ".npz":
        ref = NormalReference.load(saved)
        apply_state(model, ref.state)
    else:
        ref = _fit_reference(scope, ckpt, scorer, cfg, settings, digest)
    if world().main and not saved.is_file():
        ref.save(run.normal_scores(name))
    barrier()
    return name, ref


def training_clips(cfg: RunConfig, ckpt: dict) -> tuple[list[Clip], dict[str, tuple[int, int]]]:
    """The clips a model was trained on and the frames ``[a, b)`` of those it trained on in part: its training
    split's clips (read again from ``cfg.data``) and the footage an operator marked normal (:mod:`vad.adapt`)."""
    from vad.io.decode import as_clip
    from vad.io.records import renamed

    names = set(ckpt["train_clips"])
    extra = ckpt.get("extra_clips", {})
    clips = [c for c in read_split(cfg, "train") if c.name in names]
    clips += [renamed(as_clip(Path(e["path"])), n) for n, e in extra.items()]
    ranges = {n: tuple(r) for n, r in ckpt.get("train_ranges", {}).items()}
    ranges.update({n: tuple(e["range"]) for n, e in extra.items()})
    if len(clips) != len(names):
        raise UsageError(f"the model was trained on {len(names)} clips; {cfg.data.root} and the footage marked normal "
                         f"hold {len(clips)} of them")
    return clips, ranges


def _fit_reference(scope: str, ckpt: dict, scorer, cfg: RunConfig, settings: dict, digest: str) -> NormalReference:
    from vad.checkpoint import trained_model_config
    from vad.reference import fit_reference, holdout

    trained = trained_model_config(ckpt).scoring()
    changed = ", ".join(f"model.{k}={v}" for k, v in settings.items() if trained[k] != v)
    try:
        clips, ranges = training_clips(cfg, ckpt)
    except (VadError, OSError) as err:
        raise UsageError(f"{changed} needs the model's normal reference for that setting, fitted on the hold-out of "
                         f"its training footage ({cfg.data.root}), which cannot be read ({err}); score with the "
                         "trained settings, or make that footage available") from None
    print(f"fitting the normal reference for {changed} ({scope}) on the hold-out of {len(clips)} training clips")
    val = holdout(clips, ckpt["config"]["train"]["val_fraction"], ranges)[1]
    raw, per_position = fit_reference(partial(scorer.outputs, clips, val), scorer.model,
                                      scorer.model.has_position_stats)
    scores = per_position if scorer.per_position else raw
    return NormalReference(np.asarray(scores, np.float64), settings, scorer.per_position,
                           reference_state(scorer.model), digest, scorer.model.branches)


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
          f"macro {metrics['frame_auc_macro']:.3f}; watch {out / 'videos'}/*.mp4\n"
          f"  review: {RunFolder(out).review_page} (vad review --run {out} to mark events)")
    return metrics
