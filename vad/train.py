"""Training: optimiser and schedule, the validation hold-out, checkpoints, resume, calibration.

Layout of a training folder::

    OUT/model.pt                the selected model (best validation loss) with its calibration
    OUT/checkpoints/last.pt     everything needed to resume (model, optimiser, schedule, epoch, RNG)
    OUT/checkpoints/best.pt     the best-validation-loss model so far
    OUT/train_log.jsonl         one line per epoch

The hold-out is the last ``val_fraction`` of every training clip's frames: normal footage the student never
trains on, used to select the checkpoint and to calibrate the anomaly map. The test set is never read here.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vad.checkpoint import FORMAT, atomic_save, model_state, read_checkpoint, restore_model
from vad.config import RunConfig, from_dict, to_dict
from vad.errors import VadError
from vad.io.dataset import FrameStream, FrameTransform, make_loader
from vad.io.decode import iter_frames
from vad.io.records import Clip
from vad.models import AnomalyModel, backbone_spec, build_model, frame_scores


class ResumeError(VadError, ValueError):
    """A training folder holds a checkpoint from a different configuration."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available; use --device cpu or auto")
    return device


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``setting`` (auto: bf16 on CUDA, none on CPU)."""
    options = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
    if setting not in options:
        raise ValueError(f"unknown amp setting {setting!r}; expected one of {sorted(options)}")
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return options[setting]


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``, channels-last (the layout the models run fastest in); non-blocking from pinned memory."""
    return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def frame_size(clip: Clip) -> tuple[int, int]:
    """``(height, width)`` of a clip's frames (decodes one frame)."""
    _, frames = next(iter(iter_frames(clip, batch_size=1, stop=1)))
    return int(frames.shape[-2]), int(frames.shape[-1])


def input_size(cfg: RunConfig, clips: Sequence[Clip]) -> tuple[int, int]:
    """The network's input ``(height, width)``: explicit, or the footage's aspect ratio at ``input_height``."""
    h = cfg.model.input_height
    if cfg.model.input_width:
        return h, cfg.model.input_width
    fh, fw = frame_size(clips[0])
    return h, max(16, int(round(h * fw / fh / 16)) * 16)


def holdout(clips: Sequence[Clip], fraction: float) -> tuple[dict, dict]:
    """``(train_ranges, val_ranges)``: per clip, frames ``[0, n - k)`` train and the last ``k`` validate."""
    if not 0 < fraction < 1:
        raise ValueError(f"train.val_fraction must be in (0, 1); got {fraction}")
    train, val = {}, {}
    for c in clips:
        n = c.num_frames
        k = max(1, int(round(n * fraction)))
        if n - k < 1:
            raise ValueError(f"training clip {c.name} has {n} frame(s); too short to hold out {fraction:.0%}")
        train[c.name], val[c.name] = (0, n - k), (n - k, n)
    return train, val


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def stage_epochs(model: AnomalyModel, cfg: RunConfig, steps_per_epoch: int) -> dict[str, int]:
    """Epochs per training stage: ``train.epochs`` for the first (the students / the cloner), then
    ``train.disc_epochs`` for RSTPM's discriminative network. Checked here, before any training starts."""
    t = cfg.train
    option = {stage: "train.disc_epochs" if stage == "disc" else "train.epochs" for stage in model.stages}
    epochs = {stage: t.disc_epochs if stage == "disc" else t.epochs for stage in model.stages}
    if any(n < 1 for n in epochs.values()):
        raise ValueError(f"every training stage needs >= 1 epoch; got {epochs} (train.epochs, train.disc_epochs)")
    for stage, n in epochs.items():
        if t.schedule == "onecycle" and n * steps_per_epoch < 4:
            raise ValueError(f"train.schedule 'onecycle' needs at least 4 steps per stage; stage {stage!r} has "
                             f"{n * steps_per_epoch} (raise {option[stage]}, lower train.batch_size, "
                             "or use 'constant')")
    return epochs


def _optimizer(model: AnomalyModel, cfg: RunConfig, steps: int) -> tuple[torch.optim.Optimizer, object]:
    """Optimiser and schedule over the parameters the model's current stage trains."""
    t = cfg.train
    params = [p for m in model.stage_modules(model.stage) for p in m.parameters() if p.requires_grad]
    if t.optimizer == "adam":
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    elif t.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    else:
        raise ValueError(f"unknown train.optimizer {t.optimizer!r}; expected adam or sgd")
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
    elif t.schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    else:
        raise ValueError(f"unknown train.schedule {t.schedule!r}; expected onecycle, cosine or constant")
    return opt, sched


VAL_SEED = 1234  # pseudo-anomalies in validation are the same every epoch


@torch.no_grad()
def _val_loss(model: AnomalyModel, loader, device: torch.device, dtype) -> float:
    """Mean loss of the current stage over the hold-out (repeatable: a fixed generator for any randomness)."""
    model.eval()
    gen = torch.Generator().manual_seed(VAL_SEED)
    total, n = 0.0, 0
    for batch in loader:
        x = to_device(batch["frames"], device)
        with autocast(device, dtype):
            loss = model.loss(x, gen)
        total += float(loss) * len(x)
        n += len(x)
    return total / max(n, 1)


@torch.no_grad()
def _val_maps(model: AnomalyModel, loader, device: torch.device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw frame scores ``(N,)`` and anomaly maps ``(N, h, w)`` of the hold-out, on the CPU."""
    model.eval()
    scores, maps = [], []
    for batch in loader:
        x = to_device(batch["frames"], device)
        with autocast(device, dtype):
            sc, amap = model.score_and_map(x)
        scores.append(sc.float().cpu())
        maps.append(amap.float().cpu())
    return torch.cat(scores), torch.cat(maps)


def calibration_stats(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position ``(loc, scale)`` of normal maps ``(N, h, w)``: the mean, and the standard deviation with the
    map-wide standard deviation added as a floor, so a position that happened to see little variation in the
    hold-out does not turn every small change into a huge score."""
    loc = maps.mean(0)
    scale = maps.std(0, unbiased=False) + maps.std(unbiased=False)
    return loc, scale.clamp_min(1e-12)


def _config_key(cfg: RunConfig) -> dict:
    d = to_dict(cfg)
    d["train"].pop("num_workers")  # resuming with more decode workers is fine
    d["model"].pop("mkd_score")  # how MKD turns its losses into a frame score: a scoring choice, not a training one
    for other in ("data", "score", "postprocess", "eval", "render"):  # where the data lives, and later stages
        d.pop(other)
    return d


def train(
    clips: Sequence[Clip], cfg: RunConfig, out: Path | str, device: str | torch.device = "auto",
    progress: bool = True,
) -> Path:
    """Train a model on normal ``clips``; return the path of ``out/model.pt``. Resumes from
    ``out/checkpoints/last.pt`` when it exists (same config required)."""
    out = Path(out)
    device = resolve_device(device)
    t = cfg.train
    if t.batch_size < 1:
        raise ValueError(f"train.batch_size must be >= 1; got {t.batch_size}")
    if not clips:
        raise ValueError("no training clips")
    dtype = amp_dtype(t.amp, device)
    size = input_size(cfg, clips)
    transform = FrameTransform(size=size, normalization=backbone_spec(cfg.model.backbone).normalization)
    train_ranges, val_ranges = holdout(clips, t.val_fraction)
    n_train = sum(b - a for a, b in train_ranges.values())
    steps_per_epoch = math.ceil(n_train / t.batch_size)
    pin = device.type == "cuda"
    train_stream = FrameStream(clips, transform, batch_size=t.batch_size, shuffle=True, seed=t.seed,
                               ranges=train_ranges, shuffle_buffer=t.shuffle_buffer)
    val_loader = make_loader(FrameStream(clips, transform, batch_size=32, ranges=val_ranges), t.num_workers, pin)

    _seed(t.seed)
    model = build_model(cfg.model)
    model.to(device, memory_format=torch.channels_last)
    epochs = stage_epochs(model, cfg, steps_per_epoch)
    plan = [stage for stage in model.stages for _ in range(epochs[stage])]  # the stage of every epoch
    meta = {"format": FORMAT, "config": to_dict(cfg), "input_size": list(size),
            "normalization": transform.normalization, "train_clips": [c.name for c in clips]}
    gen = torch.Generator().manual_seed(t.seed)  # pseudo-anomalies (RSTPM's discriminative stage)

    ckdir = out / "checkpoints"
    start, best, ck = 0, math.inf, None
    if (ckdir / "last.pt").exists():
        ck = read_checkpoint(ckdir / "last.pt")
        if _config_key(from_dict(RunConfig, ck["config"])) != _config_key(cfg):
            raise ResumeError(f"{ckdir / 'last.pt'} was trained with a different config; use a new output folder "
                              "or delete the old checkpoints to start over")
        if ck["train_clips"] != meta["train_clips"]:
            raise ResumeError(f"{ckdir / 'last.pt'} was trained on other clips ({len(ck['train_clips'])}: "
                              f"{', '.join(ck['train_clips'][:4])}...); use a new output folder for this data")
        model.load_state_dict(ck["model"], strict=False)
        torch.set_rng_state(ck["rng"])
        if "gen" in ck:  # absent from checkpoints written before staged training
            gen.set_state(ck["gen"])
        start, best = ck["epoch"] + 1, ck["best_val"]
        if start >= len(plan) and (out / "model.pt").is_file():
            if read_checkpoint(out / "model.pt")["config"]["model"] == meta["config"]["model"]:
                if progress:
                    print(f"{out / 'model.pt'}: already trained ({len(plan)} epochs); delete it to retrain")
                return out / "model.pt"
            if progress:  # only scoring settings (model.mkd_score) differ: redo the normal reference with them
                print(f"{out / 'model.pt'}: trained; re-finalising it for the changed model scoring settings")
        elif progress:
            print(f"resuming from {ckdir / 'last.pt'} at epoch {start + 1}/{len(plan)}")
    # The stage of the last finished epoch; the loop below switches stages the same way whether or not it resumed.
    model.set_stage(plan[start - 1] if start else plan[0])
    opt, sched = _optimizer(model, cfg, epochs[model.stage] * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])

    log_path = out / "train_log.jsonl"
    if log_path.exists():  # drop lines of epochs the resumed run will redo
        kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= start]
        log_path.write_text("".join(ln + "\n" for ln in kept))
    t0 = time.perf_counter()
    bar = tqdm(range(start, len(plan)), desc="training", unit="epoch", disable=not progress,
               initial=start, total=len(plan))
    for epoch in bar:
        if plan[epoch] != model.stage:  # a new stage starts from the previous stage's selected model
            model.load_state_dict(read_checkpoint(ckdir / "best.pt")["model"], strict=False)
            model.set_stage(plan[epoch])
            opt, sched = _optimizer(model, cfg, epochs[model.stage] * steps_per_epoch)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
            best = math.inf
        model.train()
        train_stream.set_epoch(epoch)
        total, seen = 0.0, 0
        for batch in make_loader(train_stream, t.num_workers, pin):
            x = to_device(batch["frames"], device)
            with autocast(device, dtype):
                loss = model.loss(x, gen)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += float(loss.detach()) * len(x)
            seen += len(x)
        val_loss = _val_loss(model, val_loader, device, dtype)
        improved = val_loss < best
        if improved:
            best = val_loss
            atomic_save({**meta, "model": model_state(model), "epoch": epoch, "stage": model.stage,
                         "val_loss": val_loss}, ckdir / "best.pt")
        record = {"epoch": epoch + 1, "stage": model.stage, "train_loss": total / max(seen, 1), "val_loss": val_loss,
                  "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 2), "best": improved}
        with log_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        atomic_save({**meta, "model": model_state(model), "epoch": epoch, "stage": model.stage, "best_val": best,
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                     "rng": torch.get_rng_state(), "gen": gen.get_state()}, ckdir / "last.pt")
        bar.set_postfix(stage=model.stage, train=f"{record['train_loss']:.4f}", val=f"{val_loss:.4f}")

    best_ck = read_checkpoint(ckdir / "best.pt")
    # Rebuilt with this run's config: it may differ from the checkpoint's only in scoring settings (_config_key).
    model = restore_model({**best_ck, "config": meta["config"]}).to(device, memory_format=torch.channels_last)
    final = {**meta, "model": None, "epoch": best_ck["epoch"], "val_loss": best_ck["val_loss"]}
    # Normal reference: the hold-out's anomaly maps give the per-position calibration and the per-frame scores
    # that thresholds and calibrated normalisation are drawn from (normal training data only).
    scores, maps = _val_maps(model, val_loader, device, dtype)
    final["val_scores"] = {"raw": scores}
    if t.calibrate:
        model.set_calibration(*calibration_stats(maps))
        final["val_scores"]["calibrated"] = frame_scores(model.calibrate_map(maps.to(model.calib_loc.device)).cpu())
    final["model"] = model_state(model)
    atomic_save(final, out / "model.pt")
    return out / "model.pt"


def train_per_scene(clips: Sequence[Clip], cfg: RunConfig, out: Path | str, device: str = "auto",
                    progress: bool = True) -> dict[str, Path]:
    """One model per scene (``out/scenes/<scene>/model.pt``); clips without a scene form scene ``"all"``."""
    groups: dict[str, list[Clip]] = {}
    for c in clips:
        groups.setdefault(c.scene or "all", []).append(c)
    return {scene: train(group, cfg, Path(out) / "scenes" / scene, device, progress)
            for scene, group in sorted(groups.items())}
