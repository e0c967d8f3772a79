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
from vad.distributed import all_sum, barrier, frame_shares, world
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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (Intel AMX): there bf16 autocast about doubles STPM's
    throughput (benchmarks/throughput.py); elsewhere bf16 is emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return False
    return "amx_bf16" in flags


def amp_dtype(setting: str, device: torch.device, cpu_auto_bf16: bool = False) -> torch.dtype | None:
    """The autocast dtype for ``setting``. ``auto``: bf16 on CUDA; on the CPU float32, or bf16 with
    ``cpu_auto_bf16`` on a CPU with native bf16 (scoring; training stays float32 on CPUs)."""
    options = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
    if setting not in options:
        raise ValueError(f"unknown amp setting {setting!r}; expected one of {sorted(options)}")
    if setting == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if cpu_auto_bf16 and device.type == "cpu" and cpu_has_native_bf16() else None
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
    w = world()
    progress = progress and w.main  # under torchrun rank 0 reports
    if w.world_size > 1:  # DDP: each rank trains on an equal share of the frames (the same number of steps)
        train_ranges = frame_shares(train_ranges, w.rank, w.world_size)
        if not train_ranges:
            raise ValueError(f"{w.world_size} processes cannot share {len(clips)} training clips' frames")
    n_train = sum(b - a for a, b in train_ranges.values())
    # Every epoch takes exactly this many steps (the schedule's length); the stream always has at least as many
    # batches (with several decode workers each worker's last batch may be partial, giving a few more).
    steps_per_epoch = math.ceil(n_train / t.batch_size)
    pin = device.type == "cuda"
    train_stream = FrameStream([c for c in clips if c.name in train_ranges], transform, batch_size=t.batch_size,
                               shuffle=True, seed=t.seed + 1000 * w.rank, ranges=train_ranges,
                               shuffle_buffer=t.shuffle_buffer)
    val_loader = make_loader(FrameStream(clips, transform, batch_size=32, ranges=val_ranges), t.num_workers, pin)

    _seed(t.seed)
    model = build_model(cfg.model)
    model.to(device, memory_format=torch.channels_last)
    epochs = stage_epochs(model, cfg, steps_per_epoch)
    plan = [stage for stage in model.stages for _ in range(epochs[stage])]  # the stage of every epoch
    meta = {"format": FORMAT, "config": to_dict(cfg), "input_size": list(size),
            "normalization": transform.normalization, "train_clips": [c.name for c in clips]}
    gen = torch.Generator().manual_seed(t.seed + 1000 * w.rank)  # pseudo-anomalies (RSTPM's discriminative stage)

    ckdir = out / "checkpoints"
    start, best, ck = 0, math.inf, None
    if (ckdir / "last.pt").exists():
        ck = read_checkpoint(ckdir / "last.pt")
        if _config_key(from_dict(RunConfig, ck["config"])) != _config_key(cfg):
            raise ResumeError(f"{ckdir / 'last.pt'} was trained with a different config; use a new output folder "
                              "or delete the old checkpoints to start over")
        if ck.get("processes", 1) != w.world_size:
            raise ResumeError(f"{ckdir / 'last.pt'} was trained by {ck.get('processes', 1)} process(es); resume it "
                              f"with the same number (now {w.world_size}): the schedule's length depends on it")
        if ck["train_clips"] != meta["train_clips"]:
            raise ResumeError(f"{ckdir / 'last.pt'} was trained on other clips ({len(ck['train_clips'])}: "
                              f"{', '.join(ck['train_clips'][:4])}...); use a new output folder for this data")
        model.load_state_dict(ck["model"], strict=False)
        torch.set_rng_state(ck["rng"])
        if "gen" in ck and w.main:  # absent from checkpoints written before staged training
            gen.set_state(ck["gen"])
        elif w.rank:  # only rank 0's stream is saved: the others continue on a fresh one per resumed epoch
            gen.manual_seed(t.seed + 1000 * w.rank + 7919 * (ck["epoch"] + 1))
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
    if log_path.exists() and w.main:  # drop lines of epochs the resumed run will redo
        kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= start]
        log_path.write_text("".join(ln + "\n" for ln in kept))
    t0 = time.perf_counter()
    bar = tqdm(range(start, len(plan)), desc="training", unit="epoch", disable=not progress,
               initial=start, total=len(plan))
    step = _stepper(model, device)
    for epoch in bar:
        if plan[epoch] != model.stage:  # a new stage starts from the previous stage's selected model
            model.load_state_dict(read_checkpoint(ckdir / "best.pt")["model"], strict=False)
            model.set_stage(plan[epoch])
            step = _stepper(model, device)
            opt, sched = _optimizer(model, cfg, epochs[model.stage] * steps_per_epoch)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
            best = math.inf
        model.train()
        train_stream.set_epoch(epoch)
        total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no host sync per step
        t_epoch, seen = time.perf_counter(), 0
        batches = iter(make_loader(train_stream, t.num_workers, pin))
        for _ in range(steps_per_epoch):
            batch = next(batches, None)
            if batch is None:  # cannot happen with intact data: the stream has >= steps_per_epoch batches
                raise RuntimeError(f"epoch {epoch + 1}: the training stream ended before {steps_per_epoch} steps")
            x = to_device(batch["frames"], device)
            with autocast(device, dtype):
                loss = step(x, gen)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += loss.detach() * len(x)
            seen += len(x)
        del batches  # stops the decode workers (they may hold a partial batch more)
        loss_sum, seen = all_sum([float(total), seen], device)
        train_secs = time.perf_counter() - t_epoch
        if w.main:
            val_loss = _val_loss(model, val_loader, device, dtype)
            improved = val_loss < best
            if improved:
                best = val_loss
                atomic_save({**meta, "model": model_state(model), "epoch": epoch, "stage": model.stage,
                             "val_loss": val_loss}, ckdir / "best.pt")
            record = {"epoch": epoch + 1, "stage": model.stage, "train_loss": loss_sum / max(seen, 1),
                      "val_loss": val_loss, "lr": opt.param_groups[0]["lr"],
                      "seconds": round(time.perf_counter() - t0, 2), "frames_per_s": round(seen / train_secs, 1),
                      "processes": w.world_size, "best": improved}
            with log_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            atomic_save({**meta, "model": model_state(model), "epoch": epoch, "stage": model.stage, "best_val": best,
                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "scaler": scaler.state_dict(), "rng": torch.get_rng_state(), "gen": gen.get_state(),
                         "processes": w.world_size},
                        ckdir / "last.pt")
            bar.set_postfix(stage=model.stage, train=f"{record['train_loss']:.4f}", val=f"{val_loss:.4f}")
        barrier()  # the other ranks wait for rank 0's validation and checkpoints

    if not w.main:
        barrier()  # until rank 0 has written model.pt
        return out / "model.pt"
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
    barrier()
    return out / "model.pt"


class _StageLoss(torch.nn.Module):
    """The model's current-stage loss as ``forward``, which DistributedDataParallel hooks into."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model.loss(x, generator)


def _stepper(model: AnomalyModel, device: torch.device):
    """``model.loss``, or with several processes the same loss through DistributedDataParallel (gradients are
    averaged across ranks in backward). Built per stage: DDP registers the parameters that train at construction,
    and it makes every rank start from rank 0's weights."""
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
    return {scene: train(group, cfg, Path(out) / "scenes" / scene, device, progress)
            for scene, group in sorted(groups.items())}
