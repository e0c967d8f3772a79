"""Preparing a trained model for scoring: everything that writes into the run folder before it can be opened.

:func:`prepare_model` makes, each once, what :func:`vad.runtime.open.open_model` then only reads: the normal reference
for the scoring settings of ``cfg.model`` (:func:`normal_reference`) and, for a runtime, the model's export
(:func:`exported_model`), a lower-precision copy made and checked (:func:`ready_variant`) and for ``auto`` each
backend's speed measured on this machine. Under ``torchrun`` rank 0 writes and every rank waits for it (``barrier``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import multiprocessing
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from vad.config import RunConfig
from vad.distributed import barrier, world
from vad.errors import UsageError, VadError
from vad.io import Clip, read_dataset
from vad.io.decode import as_clip
from vad.io.records import renamed
from vad.models import scored_branches
from vad.runs import RunFolder, file_digest
from vad.runtime import open as opening
from vad.runtime.batches import outputs
from vad.runtime.checkpoint import trained_model_config
from vad.runtime.export import VARIANTS, Runtime, export_model, exported, fastest_backend
from vad.runtime.quantize import candidates, made_for, make_variant, read_check
from vad.runtime.reference import NormalReference, fit_reference, holdout, reference_id, reference_state
from vad.runtime.scorer import Scorer

log = logging.getLogger(__name__)


def prepare_model(run: RunFolder | Path | str, cfg: RunConfig, device: str = "auto", *, scope: str | None = None,
                  backend: str | None = None, frames: int | Callable[[dict], int] | None = None) -> opening.OpenModel:
    """Make what opening the model of ``run`` (``scope``) for ``backend`` (default ``cfg.score.backend``; ``torch``:
    the normal reference alone) needs; ``frames`` as for :func:`vad.runtime.open.open_model`. Returns the model as
    prepared, its scorer running the backend chosen."""
    m = opening.start(run, cfg, device, scope, backend, frames, normal_reference)
    if m.backend != "torch":
        m.backend = use_backend(m, m.backend, cfg)
        if m.backend in VARIANTS:  # the copy's own reference, saved in the run folder (rank 0) under its own name
            saved = m.run.normal_scores(f"{m.reference_name}-{m.backend}")
            if world().main and not saved.is_file():
                NormalReference.load(m.run.export(m.reference_name) / m.backend / "reference.npz").save(saved)
            barrier()
            m.precise(*opening.variant_reference(m.run, m.reference_name, m.backend, m.scorer))
    return m


def normal_reference(run: RunFolder, scope: str, path: Path, scorer: Scorer, ckpt: dict, cfg: RunConfig
                     ) -> tuple[str, NormalReference]:
    """:func:`vad.runtime.open.saved_reference`, else the checkpoint's own for the trained settings, else fitted on
    the hold-out of the model's training clips (read again from ``cfg.data``), its statistics applied to the
    scorer's model; rank 0 saves a new one."""
    try:
        name, ref = opening.saved_reference(run, scope, path, scorer, ckpt, cfg)
    except opening.NotPrepared:
        settings = cfg.model.scoring()
        digest = file_digest(path)
        name = reference_id(scope, digest, settings, scorer.per_position)
        if settings == trained_model_config(ckpt).scoring():
            ref = opening.trained_reference(scorer, ckpt, digest)
        else:
            ref = _fit_reference(scope, ckpt, scorer, cfg, settings, digest)
        if world().main:  # an earlier version's .npy, without the model's statistics, gets its .npz beside it
            ref.save(run.normal_scores(name).with_suffix(".npz"))
    barrier()
    return name, ref


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


def use_backend(m: opening.OpenModel, backend: str, cfg: RunConfig) -> str:
    """Score with ``m``'s model exported and run by ``backend`` (a lower-precision copy made first if need be), or
    for ``auto`` by the backend measured fastest here (one batch of the scorer's size); returns the backend used."""
    scorer, ref = m.scorer, m.reference
    folder = exported_model(m.run, m.reference_name, scorer.model, m.ckpt, ref)
    if backend in VARIANTS:
        ready_variant(scorer, m.ckpt, ref, folder, backend, cfg)
    made: dict[str, Runtime | None] = {"torch": None}
    if m.setting == "auto":
        x = torch.zeros(scorer.cfg.batch_size, 3, *m.ckpt["input_size"])

        def measure(b: str) -> float:
            scorer.use(made.setdefault(b, opening.runtime_for(folder, b)))
            return scorer.frames_per_second(x)

        wanted = candidates(folder, ref.model)
        backend, speeds, fresh = fastest_backend(folder, measure, opening.speed_setting(scorer), wanted)
        if world().main and fresh:
            log.info(f"measured on this machine: {_speeds(speeds)}; scoring with {backend}")
        skipped = [v for v in VARIANTS if (folder / v).is_dir() and v not in wanted]
        if world().main and skipped:
            log.info(f"not measured: {', '.join(skipped)} (failed its check on the normal hold-out: {folder})")
    scorer.use(made[backend] if backend in made else opening.runtime_for(folder, backend))
    return backend


def _speeds(speeds: dict[str, float]) -> str:
    return ", ".join(f"{b} {v:.1f}" for b, v in speeds.items()) + " frames/s"


def ready_variant(scorer: Scorer, ckpt: dict, ref: NormalReference, folder: Path, variant: str,
                  cfg: RunConfig) -> None:
    """The copy ``variant`` of the export in ``folder``, made (rank 0: :func:`vad.runtime.quantize.make_variant`)
    when it is not there for this model. A copy that failed its check is refused."""
    made = read_check(folder / variant)
    if world().main and not (made and made_for(folder / variant, ref.model)):
        clips, ranges = training_clips(cfg, ckpt)
        train, val = holdout(clips, ckpt["config"]["train"]["val_fraction"], ranges)
        log.info(f"making {variant}: calibrated on {len(clips)} training clips, checked on their hold-out")
        make_variant(variant, scorer, ref, folder, clips, train, val, cfg.eval.threshold_percentile)
    barrier()
    opening.copy_check(folder, variant)


def prepare_backend(opened: opening.OpenModel, cfg: RunConfig, device: str = "auto",
                    started: Callable[[object], None] | None = None) -> tuple[str, object]:
    """Prepare ``opened.pending`` (:func:`prepare_model`) in a child process at a lower priority while the live
    scorer goes on with torch (``started`` gets the process, for the caller to end it); returns ``(backend,
    runtime)`` chosen from what it wrote, for :meth:`vad.runtime.scorer.Scorer.switch` (``None``: torch)."""
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
        backend, speeds = opening.measured_fastest(folder, opened.scorer, opened.reference.model)
        log.info(f"measured on this machine: {_speeds(speeds)}")
    return backend, opening.runtime_for(folder, backend)


def _prepare_child(run: str, cfg: RunConfig, device: str, scope: str, backend: str) -> None:
    """The preparing process: ``backend`` is the setting (``auto`` measures), not the one picked before measuring."""
    with contextlib.suppress(OSError):
        os.nice(10)
    prepare_model(RunFolder(Path(run)), cfg, device, scope=scope, backend=backend)


def training_clips(cfg: RunConfig, ckpt: dict) -> tuple[list[Clip], dict[str, tuple[int, int]]]:
    """The clips a model was trained on and the frames ``[a, b)`` of those it trained on in part: its training
    split's clips (read again from ``cfg.data``) and the footage an operator marked normal
    (:mod:`vad.offline.adapt`)."""
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


def _fit_reference(scope: str, ckpt: dict, scorer: Scorer, cfg: RunConfig, settings: dict, digest: str
                   ) -> NormalReference:
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
    raw, per_position = fit_reference(partial(outputs, scorer, clips, val), scorer.model,
                                      scorer.model.has_position_stats)
    scores = per_position if scorer.per_position else raw
    return NormalReference(np.asarray(scores, np.float64), settings, scorer.per_position,
                           reference_state(scorer.model), digest, scored_branches(scorer.model))
