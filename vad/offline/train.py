"""Training: optimiser and schedule, checkpoints, resume, the normal reference (set-up: :mod:`vad.offline.session`).

A training folder (:class:`~vad.runs.RunFolder`) gets ``model.pt`` (the best validation loss's model, with its normal
reference), ``checkpoints/last.pt`` (all that resuming needs), ``checkpoints/best.pt`` and ``train_log.jsonl`` (one
line per epoch). The hold-out, the last ``val_fraction`` of every training clip's frames (normal footage the student
never trains on), selects the checkpoint and gives the normal reference; the test set is never read here.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from vad.config import SCORING, RunConfig, from_dict, to_dict
from vad.device import autocast, to_device
from vad.distributed import all_sum, barrier, world
from vad.errors import VadError
from vad.io.dataset import NORMALIZATIONS
from vad.io.records import Clip
from vad.models import AnomalyModel, speed_cue
from vad.offline.augment import ObjectShift, clip_backgrounds
from vad.offline.session import Session, hold_samples, open_session, plain_stream
from vad.offline.trainset import kept_teacher, teacher_for
from vad.progress import progress_bar
from vad.runs import RunFolder
from vad.runtime.batches import cell_speeds, outputs
from vad.runtime.checkpoint import atomic_save, model_state, read_checkpoint, restore_model
from vad.runtime.reference import fit_reference
from vad.runtime.scorer import Scorer

log = logging.getLogger(__name__)


class ResumeError(VadError, ValueError):
    """A training folder holds a checkpoint from a different configuration."""


VAL_SEED = 1234  # pseudo-anomalies in validation are the same every epoch


@torch.no_grad()
def _val_loss(model: AnomalyModel, batches, device: torch.device, dtype) -> float:
    """Mean loss of the current stage over the hold-out (repeatable: a fixed generator for any randomness)."""
    model.eval()
    gen = torch.Generator().manual_seed(VAL_SEED)
    total, n = 0.0, 0
    for batch in batches:
        x = to_device(batch["frames"], device)
        with autocast(device, dtype):
            loss = model.loss(x, gen, **kept_teacher(batch, device))
        total += float(loss) * len(x)
        n += len(x)
    return total / max(n, 1)


def _config_key(cfg: RunConfig) -> dict:
    """What a resumed (or finished) training must share with the config asking for it: the settings that change
    training; not scoring settings (:data:`~vad.config.SCORING`), where the data lives, nor later stages'."""
    d = to_dict(cfg)
    d["train"].pop("num_workers")  # resuming with more decode workers is fine
    d["train"].pop("cache_gb")  # a limit, not a setting of training
    for key in SCORING:
        d["model"].pop(key)
    for other in ("data", "score", "postprocess", "eval", "render"):
        d.pop(other)
    return d


@dataclass
class _Optim:
    """The current stage's optimiser, schedule, gradient scaler and (DDP-wrapped) loss."""

    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    loss: Any  # the stage's loss function: model.loss, or through DistributedDataParallel

    @classmethod
    def for_stage(cls, s: Session) -> _Optim:
        """The optimiser and schedule over the parameters the model's current stage trains."""
        t, steps = s.cfg.train, s.epochs[s.model.stage] * s.steps_per_epoch
        params = [p for m in s.model.stage_modules(s.model.stage) for p in m.parameters() if p.requires_grad]
        if t.optimizer == "adam":
            opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        else:  # sgd (the config admits no other)
            opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        warm = max(1, int(round(t.warmup * steps)))
        if t.schedule == "onecycle":  # at least 4 steps (stage_epochs): OneCycleLR needs two in each phase
            pct = min(max(t.warmup, 2 / steps), 1 - 2 / steps)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t.lr, total_steps=steps, pct_start=pct)
        elif t.schedule == "cosine":
            def factor(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        else:  # constant
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        return cls(opt, sched, torch.amp.GradScaler(s.device.type, enabled=s.dtype == torch.float16),
                   _stepper(s.model, s.device))


class TrainingDiverged(VadError, FloatingPointError):
    """The training loss became NaN or infinite."""


def train(
    clips: Sequence[Clip], cfg: RunConfig, out: Path | str, device: str | torch.device = "auto",
    progress: bool = True, ranges: dict[str, tuple[int, int]] | None = None, init: dict | None = None,
) -> Path:
    """Train a model on normal ``clips`` (``ranges``: only frames ``[a, b)`` of some); return the path of
    ``out/model.pt``. Resumes from ``out/checkpoints/last.pt`` when it exists (same config required); stops at the
    first non-finite loss. ``init``: a checkpoint to start from (fine-tuning: :mod:`vad.offline.adapt`) instead of a
    random student."""
    s = open_session(clips, cfg, RunFolder(out), device, progress, ranges)
    start, best, ck = _resume(s)
    if start >= len(s.plan) and _is_final(s):
        return s.run.model
    if ck is None and init is not None:  # its weights and the statistics it was trained with
        s.model.load_state_dict({k: v for k, v in init["model"].items() if k not in ("pos_loc", "pos_scale")},
                                strict=False)
    if s.runs is not None:  # only now, with the teacher's weights final: a finished or refused run decodes nothing
        hold_samples(s)
    if ck is None and init is None:  # statistics a model needs before training (a resumed one has them saved)
        s.model.fit_normal(to_device(b["frames"], s.device) for b in plain_stream(s))
    if s.cfg.object_shift_rate > 0:  # backgrounds from the training frames (recomputed on resume: deterministic)
        std = NORMALIZATIONS[s.train_stream.transform.normalization][1]
        s.shift = ObjectShift(clip_backgrounds(plain_stream(s)), s.cfg.object_shift_rate, std, s.device)
    # The stage of the last finished epoch; the loop below switches stages the same way whether or not it resumed.
    s.model.set_stage(s.plan[start - 1] if start else s.plan[0])
    o = _Optim.for_stage(s)
    if ck is not None:
        o.opt.load_state_dict(ck["optimizer"])
        o.sched.load_state_dict(ck["scheduler"])
        o.scaler.load_state_dict(ck["scaler"])
    _trim_log(s, start)
    t0 = time.perf_counter()
    bar = progress_bar(range(start, len(s.plan)), desc="training", unit="epoch", progress=s.progress,
               initial=start, total=len(s.plan))
    for epoch in bar:
        if s.plan[epoch] != s.model.stage:  # a new stage starts from the previous stage's selected model
            s.model.load_state_dict(read_checkpoint(s.run.best_checkpoint)["model"], strict=False)
            s.model.set_stage(s.plan[epoch])
            o, best = _Optim.for_stage(s), math.inf
        loss, seen, secs = _train_epoch(s, o, epoch)
        if world().main:
            record = _end_epoch(s, o, epoch, loss, seen, secs, best, time.perf_counter() - t0)
            best = min(best, record["val_loss"])
            bar.set_postfix(stage=s.model.stage, train=f"{record['train_loss']:.4f}", val=f"{record['val_loss']:.4f}")
        barrier()  # the other ranks wait for rank 0's validation and checkpoints
    return _finalise(s)


def _resume(s: Session) -> tuple[int, float, dict | None]:
    """``(first epoch to run, best validation loss so far, last checkpoint or None)``; restores the model's weights
    and the random streams from ``checkpoints/last.pt`` after checking it belongs to this run."""
    path = s.run.last_checkpoint
    if not path.exists():
        return 0, math.inf, None
    ck = read_checkpoint(path)
    w = world()
    if _config_key(from_dict(RunConfig, ck["config"])) != _config_key(s.cfg):
        raise ResumeError(f"{path} was trained with a different config; use a new output folder "
                          "or delete the old checkpoints to start over")
    if ck["processes"] != w.world_size:
        raise ResumeError(f"{path} was trained by {ck['processes']} process(es); resume it "
                          f"with the same number (now {w.world_size}): the schedule's length depends on it")
    if ck["train_clips"] != s.meta["train_clips"]:
        raise ResumeError(f"{path} was trained on other clips ({len(ck['train_clips'])}: "
                          f"{', '.join(ck['train_clips'][:4])}...); use a new output folder for this data")
    s.model.load_state_dict(ck["model"], strict=False)
    torch.set_rng_state(ck["rng"])
    if w.main:
        s.gen.set_state(ck["gen"])
    else:  # only rank 0's stream is saved: the others continue on a fresh one per resumed epoch
        s.gen.manual_seed(s.cfg.train.seed + 1000 * w.rank + 7919 * (ck["epoch"] + 1))
    start = ck["epoch"] + 1
    if s.progress and start < len(s.plan):
        log.info(f"resuming from {path} at epoch {start + 1}/{len(s.plan)}")
    return start, ck["best_val"], ck


def _is_final(s: Session) -> bool:
    """After the last epoch: whether ``model.pt`` is already this run's final model (else it is (re)written)."""
    final = s.run.model
    if final.is_file() and _config_key(from_dict(RunConfig, read_checkpoint(final)["config"])) == _config_key(s.cfg):
        if s.progress:
            log.info(f"{final}: already trained ({len(s.plan)} epochs); delete it to retrain")
        return True
    if s.progress:  # interrupted before model.pt was written
        log.info(f"{s.run.last_checkpoint}: all {len(s.plan)} epochs trained; writing {final}")
    return False


def _trim_log(s: Session, start: int) -> None:
    """Drop the log lines of epochs a resumed run will redo."""
    log = s.run.train_log
    if log.exists() and world().main:
        kept = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= start]
        log.write_text("".join(ln + "\n" for ln in kept))


DIVERGENCE_CHECK_EVERY = 50  # steps between host reads of the non-finite-loss flag on a GPU (every step on a CPU)


def _train_epoch(s: Session, o: _Optim, epoch: int) -> tuple[float, int, float]:
    """One epoch of ``steps_per_epoch`` steps; returns (loss summed over frames and ranks, frames, seconds). Raises
    :class:`TrainingDiverged` naming the step at the first non-finite loss (read from the device in batches of
    steps on a GPU, so it costs no synchronisation per step)."""
    s.model.train()
    total = torch.zeros((), dtype=torch.float64, device=s.device)  # summed on the device: no host sync per step
    first_bad = torch.full((), -1, dtype=torch.long, device=s.device)
    t_epoch, seen = time.perf_counter(), 0
    batches = iter(s.batches(epoch))
    for i in range(s.steps_per_epoch):
        batch = next(batches, None)
        if batch is None:  # cannot happen with intact data: the stream has >= steps_per_epoch batches
            raise RuntimeError(f"epoch {epoch + 1}: the training stream ended before {s.steps_per_epoch} steps")
        x, kept = to_device(batch["frames"], s.device), kept_teacher(batch, s.device)
        if s.shift is not None:
            x, changed = s.shift.apply(x, batch["clip"], s.gen)
        with autocast(s.device, s.dtype):
            if kept and s.shift is not None:  # the teacher again on the samples the shift altered
                kept["teacher"] = teacher_for(s.model, x, kept["teacher"], changed)
            loss = o.loss(x, s.gen, **kept)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), i, first_bad)
        if (s.device.type == "cpu" or (i + 1) % DIVERGENCE_CHECK_EVERY == 0) and int(first_bad) >= 0:
            _diverged(s, o, epoch, int(first_bad))
        o.opt.zero_grad(set_to_none=True)
        o.scaler.scale(loss).backward()
        o.scaler.step(o.opt)
        o.scaler.update()
        o.sched.step()
        total += loss.detach() * len(x)
        seen += len(x)
    del batches  # stops the decode workers (they may hold a partial batch more)
    if int(first_bad) >= 0:
        _diverged(s, o, epoch, int(first_bad))
    loss_sum, seen = all_sum([float(total), seen], s.device)
    return loss_sum, int(seen), time.perf_counter() - t_epoch


def _diverged(s: Session, o: _Optim, epoch: int, step: int) -> None:
    t = s.cfg.train
    raise TrainingDiverged(
        f"training diverged: the {s.model.stage} loss became NaN or infinite at epoch {epoch + 1}, step {step + 1} "
        f"(of {s.steps_per_epoch}); the learning rate was {o.opt.param_groups[0]['lr']:.3g} (train.lr={t.lr:g}). "
        f"Lower train.lr (e.g. --set train.lr={t.lr / 10:g}); nothing of this epoch was saved")


def _end_epoch(s: Session, o: _Optim, epoch: int, loss_sum: float, seen: int, train_secs: float, best: float,
               elapsed: float) -> dict:
    """Rank 0: validate, keep the best checkpoint, log the epoch, write ``last.pt``; returns the log record."""
    val_loss = _val_loss(s.model, s.val_batches(), s.device, s.dtype)
    if not math.isfinite(val_loss):
        raise TrainingDiverged(f"training diverged: the validation loss of epoch {epoch + 1} is {val_loss}; lower "
                               f"train.lr (now {s.cfg.train.lr:g})")
    improved = val_loss < best
    state = {**s.meta, "model": model_state(s.model), "epoch": epoch, "stage": s.model.stage}
    if improved:
        atomic_save({**state, "val_loss": val_loss}, s.run.best_checkpoint)
    record = {"epoch": epoch + 1, "stage": s.model.stage, "train_loss": loss_sum / max(seen, 1),
              "val_loss": val_loss, "lr": o.opt.param_groups[0]["lr"], "seconds": round(elapsed, 2),
              "frames_per_s": round(seen / train_secs, 1), "processes": world().world_size, "best": improved}
    with (s.run.train_log).open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    atomic_save({**state, "best_val": min(best, val_loss), "optimizer": o.opt.state_dict(),
                 "scheduler": o.sched.state_dict(), "scaler": o.scaler.state_dict(), "rng": torch.get_rng_state(),
                 "gen": s.gen.get_state(), "processes": world().world_size}, s.run.last_checkpoint)
    return record


def _finalise(s: Session) -> Path:
    """Rank 0 writes ``model.pt``: the best-validation model with its normal reference, fitted on the hold-out as
    the scorer scores it (:func:`vad.runtime.reference.fit_reference`; normal training data only)."""
    final_path = s.run.model
    if not world().main:
        barrier()  # until rank 0 has written model.pt
        return final_path
    best_ck = read_checkpoint(s.run.best_checkpoint)
    # Rebuilt with this run's config: it may differ from the checkpoint's only in scoring settings (_config_key).
    model = restore_model({**best_ck, "config": s.meta["config"]})
    scorer = Scorer(model, s.meta, replace(s.cfg.score, compile=False), s.device)
    cue = speed_cue(model)
    if cue is not None:  # the speed cue's rows: normal training frames, never the hold-out it is standardised on
        clips = {c.name: c for c in s.val_clips}
        cue.fit_rows(cell_speeds(scorer, [(clips[n], r) for n, r in s.speed_runs]))
    raw, per_position = fit_reference(partial(outputs, scorer, s.val_clips, s.val_ranges), model,
                                      s.cfg.train.position_stats)
    val_scores = {"raw": torch.from_numpy(raw)}
    if per_position is not None:
        val_scores["per_position"] = torch.from_numpy(per_position)
    final = {**s.meta, "model": model_state(model), "epoch": best_ck["epoch"], "val_loss": best_ck["val_loss"],
             "val_scores": val_scores, "scoring": s.cfg.model.scoring()}
    atomic_save(final, final_path)
    barrier()
    return final_path


class _StageLoss(torch.nn.Module):
    """The model's current-stage loss as ``forward``, which DistributedDataParallel hooks into."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, **kept) -> torch.Tensor:
        return self.model.loss(x, generator, **kept)


def _stepper(model: AnomalyModel, device: torch.device):
    """``model.loss``, or with several processes the same loss through DistributedDataParallel. Built per stage: DDP
    registers the parameters that train at construction, and it makes every rank start from rank 0's weights."""
    if world().world_size == 1:
        return model.loss
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(_StageLoss(model), device_ids=[device.index] if device.type == "cuda" else None)


def train_per_scene(clips: Sequence[Clip], cfg: RunConfig, out: Path | str, device: str = "auto",
                    progress: bool = True) -> dict[str, Path]:
    """One model per scene (``out/scenes/<scene>/model.pt``); clips without a scene form scene ``"all"``."""
    groups: dict[str, list[Clip]] = {}
    for c in clips:
        groups.setdefault(c.scene or "all", []).append(c)
    return {scene: train(group, cfg, RunFolder(out).scene(scene).root, device, progress)
            for scene, group in sorted(groups.items())}
