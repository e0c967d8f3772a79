"""Opening a prepared model for scoring: the one place that goes from a run folder to a ready scorer, reading only.

It never writes, exports or measures: what it needs and does not find raises :class:`NotPrepared`, which says to
prepare first (:mod:`vad.runtime.prepare` writes it all)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vad.config import RunConfig
from vad.errors import UsageError
from vad.models import scored_branches
from vad.runs import RunFolder, RunFolderError, file_digest
from vad.runtime.checkpoint import load_model, trained_model_config
from vad.runtime.export import VARIANTS, Runtime, choose_backend, exported, fastest_backend, measured
from vad.runtime.quantize import candidates, made_for, passed, read_check
from vad.runtime.quantize import runtime as copy_runtime
from vad.runtime.reference import NormalReference, apply_state, reference_id, reference_state
from vad.runtime.scorer import Scorer

log = logging.getLogger(__name__)

PREPARE = "prepare first ('vad score' or 'vad export' on this run, with the same settings)"


class NotPrepared(UsageError):
    """A file :func:`open_model` needs is missing or stale: the model was not prepared for these settings."""


@dataclass
class OpenModel:
    """A run's model ready to score (:func:`open_model`)."""

    run: RunFolder
    scope: str  # "all" (the run's model) or the scene whose model it is
    ckpt: dict
    scorer: Scorer  # running the model with ``backend``
    reference_name: str  # the reference's id: names its files in the run folder (normal scores, export)
    reference: NormalReference
    backend: str  # torch, or the runtime the scorer runs
    key: dict  # what a clip's scores depend on besides its source (:func:`scoring_key`)
    pending: str | None = None  # with ``defer``: the backend to prepare (vad.runtime.prepare.prepare_backend)
    setting: str = "torch"  # the backend asked for (score.backend, or the caller's)
    export_name: str = ""  # the f32 export's reference id (RUN/export/<export_name>/); reference_name unless a copy

    def precise(self, name: str, reference: NormalReference) -> None:
        """Score against a lower-precision copy's own reference (:mod:`vad.runtime.quantize`), under its name."""
        self.reference_name, self.reference, self.key = name, reference, {**self.key, "precision": self.backend}


def open_model(run: RunFolder | Path | str, cfg: RunConfig, device: str = "auto", *, scope: str | None = None,
               backend: str | None = None, frames: int | Callable[[dict], int] | None = None,
               defer: bool = False) -> OpenModel:
    """The prepared model of ``run`` (``scope``: one scene's, for a run trained per scene; default the run's only
    model) opened for scoring under ``cfg`` with its normal reference. ``backend`` overrides ``cfg.score.backend``.
    ``frames``: how many frames the caller will score (or a function of the scoring key giving it: the clips not
    scored yet), which decides whether ``auto`` takes a runtime when no export exists; ``None`` is a live stream
    (unbounded). ``defer``: when the backend's export or, for ``auto``, this machine's speeds are missing, the model
    opens with torch and ``pending`` names the backend to prepare; without it that is :class:`NotPrepared`."""
    m = start(run, cfg, device, scope, backend, frames, saved_reference)
    export, chosen = m.run.export(m.export_name), m.backend
    if chosen in VARIANTS and made_for(export / chosen, m.reference.model):  # preparing again would not help
        copy_check(export, chosen)
    if chosen != "torch" and not backend_ready(export, m.reference, m.scorer, chosen, m.setting):
        speeds = " and the backends are measured" if m.setting == "auto" else ""
        if not defer:
            raise NotPrepared(f"{export}: no export of this model for {chosen}"
                              + (" with this machine's speeds measured" if speeds else "") + f"; {PREPARE}")
        log.info(f"scoring with torch while the model is exported for {chosen}{speeds} (in the background)")
        m.backend, m.pending = "torch", chosen
    elif chosen != "torch":
        m.backend = measured_fastest(export, m.scorer, m.reference.model)[0] if m.setting == "auto" else chosen
        m.scorer.use(runtime_for(export, m.backend))
        if m.backend in VARIANTS:
            m.precise(*variant_reference(m.run, m.export_name, m.backend, m.scorer))
    return m


def start(run: RunFolder | Path | str, cfg: RunConfig, device: str, scope: str | None, backend: str | None,
          frames: int | Callable[[dict], int] | None, reference: Callable) -> OpenModel:
    """The model of ``run``'s ``scope`` (None: the run's only model) in a scorer running torch, with its normal
    reference (``reference``: :func:`saved_reference`, or :func:`vad.runtime.prepare.normal_reference`), and the
    backend :func:`vad.runtime.export.choose_backend` picks for ``backend`` (not yet used)."""
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
    model, ckpt = load_model(models[scope], cfg.model.scoring())
    scorer = Scorer(model, ckpt, cfg.score, device)
    name, ref = reference(folder, scope, models[scope], scorer, ckpt, cfg)
    key = scoring_key(ref, scorer, cfg)
    todo = frames(key) if callable(frames) else frames
    setting = backend or cfg.score.backend
    chosen = choose_backend(setting, scorer.model, scorer.device, todo, exported(folder.export(name), ref.model))
    return OpenModel(folder, scope, ckpt, scorer, name, ref, chosen, key, setting=setting,
                     export_name=name)


def saved_reference(run: RunFolder, scope: str, path: Path, scorer: Scorer, ckpt: dict, cfg: RunConfig
                    ) -> tuple[str, NormalReference]:
    """``(name, reference)``: the normal reference of model ``path`` under the scorer's settings, saved in the run
    folder (:func:`vad.runtime.prepare.normal_reference`), with its statistics applied to the scorer's model; for the
    trained settings the checkpoint's own values. :class:`NotPrepared` when it is not saved."""
    settings = cfg.model.scoring()
    digest = file_digest(path)
    name = reference_id(scope, digest, settings, scorer.per_position)
    saved = run.normal_scores(name)
    if settings == trained_model_config(ckpt).scoring() and saved.is_file():
        return name, trained_reference(scorer, ckpt, digest)
    if saved.suffix != ".npz" or not saved.is_file():  # a .npy of an earlier version lacks the model's statistics
        raise NotPrepared(f"{saved}: no normal reference of this model for these scoring settings; {PREPARE}")
    ref = NormalReference.load(saved)
    apply_state(scorer.model, ref.state)
    return name, ref


def trained_reference(scorer: Scorer, ckpt: dict, digest: str) -> NormalReference:
    """The normal reference a checkpoint holds for its trained scoring settings (its hold-out pass)."""
    kind = "per_position" if scorer.per_position else "raw"
    return NormalReference(ckpt["val_scores"][kind].numpy().astype(np.float64), trained_model_config(ckpt).scoring(),
                           scorer.per_position, reference_state(scorer.model), digest, scored_branches(scorer.model))


def variant_reference(run: RunFolder, name: str, variant: str, scorer: Scorer) -> tuple[str, NormalReference]:
    """``(name, reference)`` of the copy ``variant`` of export ``name``: its own normal reference (fitted to its
    scores), applied to ``scorer``'s model, under the name the clips it scores are recorded with (saved in the run
    folder by :func:`vad.runtime.prepare.prepare_model`)."""
    ref = NormalReference.load(run.export(name) / variant / "reference.npz")
    apply_state(scorer.model, {k: v for k, v in ref.state.items() if k.startswith("pos_")})
    name = f"{name}-{variant}"
    if not run.normal_scores(name).is_file():
        raise NotPrepared(f"{run.normal_scores(name)}: the {variant} copy's normal reference is missing; {PREPARE}")
    return name, ref


def backend_ready(folder: Path, ref: NormalReference, scorer: Scorer, backend: str, setting: str) -> bool:
    """Whether ``backend`` can score at once: its export in ``folder`` exists and, for ``auto``, the backends'
    speeds on this machine are measured."""
    if not exported(folder, ref.model):
        return False
    if backend in VARIANTS and not passed(folder / backend, ref.model):
        return False
    return setting != "auto" or measured(folder, speed_setting(scorer), candidates(folder, ref.model)) is not None


def measured_fastest(folder: Path, scorer: Scorer, digest: str) -> tuple[str, dict]:
    """``(backend, speeds)``: of the backends that can run the export in ``folder`` (of the model with SHA-1
    ``digest``), the one measured fastest on this machine, and each one's frames/s."""
    def measure(b: str) -> float:
        raise NotPrepared(f"{folder}: no speed measured for {b} on this machine; {PREPARE}")

    return fastest_backend(folder, measure, speed_setting(scorer), candidates(folder, digest))[:2]


def copy_check(folder: Path, variant: str) -> None:
    """Refuse the copy ``variant`` of the export in ``folder`` unless it passed its check on the normal hold-out."""
    made = read_check(folder / variant)
    if made is None or not made.passed:
        raise UsageError(f"--backend {variant}: {folder / variant} did not pass its check on the normal hold-out "
                         f"({made.line() if made else 'no check'}); score with another backend (auto skips it)")


def speed_setting(scorer: Scorer) -> str:
    """What besides the machine changes a measured speed: the batch size and torch's precision."""
    precision = str(scorer.runner.dtype or torch.float32).removeprefix("torch.")
    return f"batch {scorer.cfg.batch_size}, torch {precision}"


def scoring_key(ref: NormalReference, scorer: Scorer, cfg: RunConfig) -> dict:
    """What a clip's scores depend on besides its source: the model file, its scoring settings, per-position
    standardising, the maps' grid."""
    return {"model": ref.model, "scoring": ref.settings, "per_position": scorer.per_position,
            "map_stride": cfg.score.map_stride if cfg.score.save_maps else None}


def runtime_for(folder: Path, backend: str) -> Runtime | None:
    """What runs the export in ``folder`` for ``backend``: None for torch, a runtime, or a copy's runtime."""
    if backend == "torch":
        return None
    return copy_runtime(folder / backend) if backend in VARIANTS else Runtime(backend, folder)
