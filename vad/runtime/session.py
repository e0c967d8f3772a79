"""Opening a trained model for scoring: the one place that goes from a run folder to a ready scorer.

:func:`open_model` does, in this order, what every caller needs before the first frame is scored:

1. the model file of the run (one scope: the run's model, or one scene's) restored under the scoring settings of
   ``cfg.model`` (:data:`vad.config.SCORING`) into a :class:`vad.runtime.scorer.Scorer`;
2. its normal reference for those settings (:func:`normal_reference`: the checkpoint's own for the trained
   settings, else one saved in the run folder, else fitted on the hold-out of the model's training footage), with
   the reference's statistics applied to the model;
3. the backend (``score.backend``, or ``backend``) checked and, where it is a runtime, the model exported once and
   switched to (:func:`use_backend`; ``auto`` measures torch and each runtime here once and takes the fastest).

Its callers: :func:`vad.offline.pipeline.score_stage` and :func:`vad.offline.pipeline.export_stage` (the CLI's
``score``,
``export`` and ``run``), :meth:`vad.live.detector.Detector.load` (the Python API and ``vad watch``), and
:func:`vad.offline.adapt.adapt` (through :func:`training_clips`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from vad.config import RunConfig
from vad.distributed import barrier, world
from vad.errors import UsageError, VadError
from vad.io import Clip, read_dataset
from vad.models import scored_branches
from vad.runs import RunFolder, RunFolderError, file_digest
from vad.runtime.export import VARIANTS, Runtime, choose_backend, export_model, exported, fastest_backend, measured
from vad.runtime.quantize import Check, candidates, made_for, make_variant, passed, read_check
from vad.runtime.quantize import runtime as copy_runtime
from vad.runtime.reference import NormalReference, apply_state, reference_id, reference_state

log = logging.getLogger(__name__)


@dataclass
class OpenModel:
    """A run's model ready to score (:func:`open_model`)."""

    run: RunFolder
    scope: str  # "all" (the run's model) or the scene whose model it is
    path: Path  # the model file
    ckpt: dict
    scorer: object  # vad.runtime.scorer.Scorer, running the model with ``backend``
    reference_name: str  # the reference's id: names its files in the run folder (normal scores, export)
    reference: NormalReference
    backend: str  # torch, or the runtime the scorer runs
    key: dict  # what a clip's scores depend on besides its source (:func:`scoring_key`)
    pending: str | None = None  # with ``defer``: the backend to prepare (:func:`prepare_backend`) while torch scores
    setting: str = "torch"  # the backend asked for (score.backend, or the caller's)
    export_name: str = ""  # the f32 export's reference id (RUN/export/<export_name>/); reference_name unless a copy

    @property
    def model(self):
        return self.scorer.model


def open_model(run: RunFolder | Path | str, cfg: RunConfig, device: str = "auto", *, scope: str | None = None,
               backend: str | None = None, frames: int | Callable[[dict], int] | None = None,
               defer: bool = False) -> OpenModel:
    """The model of ``run`` (``scope``: one scene's, for a run trained per scene; default the run's only model)
    opened for scoring under ``cfg``: scorer, normal reference, backend (see the module docstring). ``backend``
    overrides ``cfg.score.backend``. ``frames``: how many frames the caller will score (or a function of the
    scoring key giving it: the clips not scored yet), which decides whether ``auto`` exports; ``None`` is a live
    stream (unbounded). ``defer``: when the backend needs an export not made yet, or ``auto`` has not measured the
    backends on this machine, the model opens with torch and ``pending`` names the backend to prepare."""
    from vad.runtime.checkpoint import load_model
    from vad.runtime.scorer import Scorer

    folder = run if isinstance(run, RunFolder) else RunFolder(Path(run))
    models = folder.model_files()
    if not models:
        raise RunFolderError(f"{folder.root}: no model.pt (or scenes/<scene>/model.pt); train first with "
                             f"'vad train ... --out {folder.root}'")
    if scope is None:
        if len(models) > 1:
            raise UsageError(f"{folder.root} holds one model per scene ({', '.join(models)}); say which with --scene")
        scope = next(iter(models))
    if scope not in models:
        raise UsageError(f"--scene {scope}: {folder.root} has models for {', '.join(models)}")
    path = models[scope]
    model, ckpt = load_model(path, cfg.model.scoring())
    scorer = Scorer(model, ckpt, cfg.score, device)
    name, ref = normal_reference(folder, scope, path, scorer, ckpt, cfg)
    key = scoring_key(ref, scorer, cfg)
    todo = frames(key) if callable(frames) else frames
    setting = backend or cfg.score.backend
    chosen = choose_backend(setting, model, scorer.device, todo, exported(folder.export(name), ref.model))
    if chosen != "torch" and defer and not backend_ready(folder.export(name), ref, scorer, chosen, setting):
        log.info(f"scoring with torch while the model is exported for {chosen}"
                 + (" and the backends are measured" if setting == "auto" else "") + " (in the background)")
        return OpenModel(folder, scope, path, ckpt, scorer, name, ref, "torch", key, pending=chosen, setting=setting,
                         export_name=name)
    export_name = name
    if chosen != "torch":
        chosen = use_backend(scorer, folder, name, ckpt, ref, chosen, setting == "auto", cfg)
        if chosen in VARIANTS:  # a lower-precision copy scores against its own reference (vad.runtime.quantize)
            name, ref = variant_reference(folder, name, chosen, scorer)
            key = {**key, "precision": chosen}
    return OpenModel(folder, scope, path, ckpt, scorer, name, ref, chosen, key, setting=setting,
                     export_name=export_name)


def variant_reference(run: RunFolder, name: str, variant: str, scorer) -> tuple[str, NormalReference]:
    """``(name, reference)`` of the copy ``variant`` of export ``name``: its own normal reference (fitted to its
    scores), applied to ``scorer``'s model and saved in the run folder (rank 0) under its own name, which the clips
    it scores are recorded with."""
    ref = NormalReference.load(run.export(name) / variant / "reference.npz")
    apply_state(scorer.model, {k: v for k, v in ref.state.items() if k.startswith("pos_")})
    name = f"{name}-{variant}"
    if world().main and not run.normal_scores(name).is_file():
        ref.save(run.normal_scores(name))
    barrier()
    return name, ref


def backend_ready(folder: Path, ref: NormalReference, scorer, backend: str, setting: str) -> bool:
    """Whether ``backend`` can score at once: its export in ``folder`` exists and, for ``auto``, the backends'
    speeds on this machine are measured."""
    if not exported(folder, ref.model):
        return False
    if backend in VARIANTS and not passed(folder / backend, ref.model):
        return False
    wanted = candidates(folder, ref.model)
    return setting != "auto" or measured(folder, speed_setting(scorer), wanted) is not None


def prepare_backend(opened: OpenModel, cfg: RunConfig, device: str = "auto",
                    started: Callable[[object], None] | None = None) -> tuple[str, object]:
    """Export and measure for ``opened.pending`` as the live scorer goes on with torch: in a child process (at a
    lower priority; ``started`` gets it, so that the caller can end it when it stops), which opens the model as
    ``vad score`` would (:func:`open_model`: export, measurement, kept in the run folder). Then the backend
    chosen here from what it wrote; returns ``(backend, runtime)`` for :meth:`vad.runtime.scorer.Scorer.switch` (runtime
    ``None``: torch was measured the fastest)."""
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(
        target=_prepare_child, args=(str(opened.run.root), cfg, device, opened.scope, opened.setting),
        name="vad-prepare", daemon=True)
    child.start()
    if started is not None:
        started(child)
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the preparing process ended with exit code {child.exitcode}")
    folder = opened.run.export(opened.export_name)
    backend = opened.pending
    if opened.setting == "auto":
        def measure(b: str) -> float:
            raise RuntimeError(f"no speed measured for {b} on this machine")

        backend, speeds, _ = fastest_backend(folder, measure, speed_setting(opened.scorer),
                                             candidates(folder, opened.reference.model))
        log.info(f"measured on this machine: {', '.join(f'{b} {v:.1f}' for b, v in speeds.items())} frames/s")
    return backend, runtime_for(folder, backend)


def _prepare_child(run: str, cfg: RunConfig, device: str, scope: str, backend: str) -> None:
    """In the preparing process: open the model as ``vad score --backend BACKEND`` would for a stream, at a lower
    priority: the setting (``auto`` measures the backends), not the one backend it would pick before measuring."""
    import os

    with contextlib.suppress(OSError):
        os.nice(10)
    open_model(RunFolder(Path(run)), cfg, device, scope=scope, backend=backend)


def speed_setting(scorer) -> str:
    """What besides the machine changes a measured speed: the batch size and torch's precision."""
    precision = str(scorer.dtype or torch.float32).removeprefix("torch.")
    return f"batch {scorer.cfg.batch_size}, torch {precision}"


def scoring_key(ref: NormalReference, scorer, cfg: RunConfig) -> dict:
    """What a clip's scores depend on besides its source: the model file, its scoring settings, per-position
    standardising, the maps' grid."""
    return {"model": ref.model, "scoring": ref.settings, "per_position": scorer.per_position,
            "map_stride": cfg.score.map_stride if cfg.score.save_maps else None}


def exported_model(run: RunFolder, name: str, model, ckpt: dict, ref: NormalReference,
                   formats: tuple[str, ...] = ("onnx",)) -> Path:
    """The folder of the model exported under reference ``name``'s settings: made once (rank 0), then reused."""
    folder = run.export(name)
    have_ir = "openvino" not in formats or (folder / "model.xml").is_file()
    if world().main and not (exported(folder, ref.model) and have_ir):
        log.info(f"exporting the model ({name}) to {', '.join(formats)} -> {folder}")
        export_model(copy.deepcopy(model), ckpt, ref, folder, formats)
    barrier()
    return folder


def runtime_for(folder: Path, backend: str) -> Runtime | None:
    """What runs the export in ``folder`` for ``backend``: None for torch, a runtime, or a copy's runtime."""
    if backend == "torch":
        return None
    return copy_runtime(folder / backend) if backend in VARIANTS else Runtime(backend, folder)


def use_backend(scorer, run: RunFolder, name: str, ckpt: dict, ref: NormalReference, backend: str,
                choose: bool, cfg: RunConfig) -> str:
    """Score with ``scorer``'s model exported (:func:`exported_model`) and run by ``backend`` (a lower-precision
    copy is made first when it is not yet: :func:`ready_variant`), or with ``choose`` by the backend measured
    fastest on this machine (:func:`vad.runtime.export.fastest_backend` over :func:`vad.runtime.quantize.candidates`:
    torch, the
    runtimes, the copies that passed their check; one batch of the scorer's size through the scorer); returns the
    backend used."""
    folder = exported_model(run, name, scorer.model, ckpt, ref)
    if backend in VARIANTS:
        ready_variant(scorer, ckpt, ref, folder, backend, cfg)
    made: dict[str, Runtime | None] = {"torch": None}
    if choose:
        x = torch.zeros(scorer.cfg.batch_size, 3, *ckpt["input_size"])

        def measure(b: str) -> float:
            scorer.use(made.setdefault(b, runtime_for(folder, b)))
            return scorer.frames_per_second(x)

        wanted = candidates(folder, ref.model)
        backend, speeds, fresh = fastest_backend(folder, measure, speed_setting(scorer), wanted)
        if world().main and fresh:
            log.info(f"measured on this machine: {', '.join(f'{b} {v:.1f}' for b, v in speeds.items())} frames/s; "
                     f"scoring with {backend}")
        skipped = [v for v in VARIANTS if (folder / v).is_dir() and v not in wanted]
        if world().main and skipped:
            log.info(f"not measured: {', '.join(skipped)} (failed its check on the normal hold-out: {folder})")
    scorer.use(made[backend] if backend in made else runtime_for(folder, backend))
    return backend


def ready_variant(scorer, ckpt: dict, ref: NormalReference, folder: Path, variant: str, cfg: RunConfig) -> Check:
    """The copy ``variant`` of the export in ``folder``, made (rank 0) when it is not there for this model:
    calibrated on the model's training footage, checked on its hold-out (:func:`vad.runtime.quantize.make_variant`). A
    copy that failed its check is refused."""
    from vad.runtime.reference import holdout

    made = read_check(folder / variant)
    if world().main and not (made and made_for(folder / variant, ref.model)):
        clips, ranges = training_clips(cfg, ckpt)
        train, val = holdout(clips, ckpt["config"]["train"]["val_fraction"], ranges)
        log.info(f"making {variant}: calibrated on {len(clips)} training clips, checked on their hold-out")
        made = make_variant(variant, scorer, ref, folder, clips, train, val, cfg.eval.threshold_percentile)
    barrier()
    made = read_check(folder / variant)
    if made is None or not made.passed:
        raise UsageError(f"--backend {variant}: {folder / variant} did not pass its check on the normal hold-out "
                         f"({made.line() if made else 'no check'}); score with another backend (auto skips it)")
    return made


def normal_reference(run: RunFolder, scope: str, path: Path, scorer, ckpt: dict, cfg: RunConfig
                     ) -> tuple[str, NormalReference]:
    """``(name, reference)``: the normal reference of model ``path`` under the scorer's settings, with its
    statistics applied to the scorer's model: the checkpoint's own for the trained settings, else one saved in the
    run folder, else fitted on the hold-out of the model's training clips (read again from ``cfg.data``). Rank 0
    saves it in the run folder."""
    from vad.runtime.checkpoint import trained_model_config

    model = scorer.model
    settings = cfg.model.scoring()
    digest = file_digest(path)
    name = reference_id(scope, digest, settings, scorer.per_position)
    kind = "per_position" if scorer.per_position else "raw"
    saved = run.normal_scores(name)
    if settings == trained_model_config(ckpt).scoring():
        ref = NormalReference(ckpt["val_scores"][kind].numpy().astype(np.float64), settings, scorer.per_position,
                              reference_state(model), digest, scored_branches(model))
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
    split's clips (read again from ``cfg.data``) and the footage an operator marked normal
    (:mod:`vad.offline.adapt`)."""
    from vad.io.decode import as_clip
    from vad.io.records import renamed

    names = set(ckpt["train_clips"])
    extra = ckpt.get("extra_clips", {})
    d = cfg.data
    clips = [c for c in read_dataset(d.dataset, d.root, "train", scenes=d.scenes, frame_labels=d.frame_labels)
             if c.name in names]
    clips += [renamed(as_clip(Path(e["path"])), n) for n, e in extra.items()]
    ranges = {n: tuple(r) for n, r in ckpt.get("train_ranges", {}).items()}
    ranges.update({n: tuple(e["range"]) for n, e in extra.items()})
    if len(clips) != len(names):
        raise UsageError(f"the model was trained on {len(names)} clips; {cfg.data.root} and the footage marked normal "
                         f"hold {len(clips)} of them")
    return clips, ranges


def _fit_reference(scope: str, ckpt: dict, scorer, cfg: RunConfig, settings: dict, digest: str) -> NormalReference:
    from vad.runtime.checkpoint import trained_model_config
    from vad.runtime.reference import fit_reference, holdout

    trained = trained_model_config(ckpt).scoring()
    changed = ", ".join(f"model.{k}={v}" for k, v in settings.items() if trained[k] != v)
    try:
        clips, ranges = training_clips(cfg, ckpt)
    except (VadError, OSError) as err:
        raise UsageError(f"{changed} needs the model's normal reference for that setting, fitted on the hold-out of "
                         f"its training footage ({cfg.data.root}), which cannot be read ({err}); score with the "
                         "trained settings, or make that footage available") from None
    log.info(f"fitting the normal reference for {changed} ({scope}) on the hold-out of {len(clips)} training clips")
    val = holdout(clips, ckpt["config"]["train"]["val_fraction"], ranges)[1]
    raw, per_position = fit_reference(partial(scorer.outputs, clips, val), scorer.model,
                                      scorer.model.has_position_stats)
    scores = per_position if scorer.per_position else raw
    return NormalReference(np.asarray(scores, np.float64), settings, scorer.per_position,
                           reference_state(scorer.model), digest, scored_branches(scorer.model))
