"""Batched scoring: frames -> anomaly maps -> per-frame scores, written per clip.

Output (``OUT`` is the run folder)::

    OUT/scores/<clip>.npy   (T,) float32 per-frame scores (the method's; STPM and RSTPM: max of the map)
    OUT/maps/<clip>.npy     (T, h, w) float16 anomaly maps at 1/map_stride of the input (with save_maps)

Each file is written atomically when its clip is complete; clips whose files already exist are skipped, so
an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vad.atomic import atomic_path
from vad.config import ScoreConfig
from vad.io.dataset import FrameStream, FrameTransform, make_loader
from vad.io.records import Clip
from vad.models import AnomalyModel, frame_scores
from vad.train import amp_dtype, autocast, resolve_device, to_device


def save_npy(array: np.ndarray, path: Path) -> None:
    """``np.save`` to a temporary file beside ``path``, then rename."""
    with atomic_path(path, ".npy") as tmp:
        np.save(tmp, array)


class Scorer:
    """Wraps a trained model for inference: ``scorer(frames uint8 (B, 3, H, W)) -> (scores (B,), maps (B, h, w))``."""

    def __init__(self, model: AnomalyModel, ckpt: dict, cfg: ScoreConfig, device: str | torch.device = "auto") -> None:
        self.device = resolve_device(device)
        self.dtype = amp_dtype(cfg.amp, self.device)
        self.cfg = cfg
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.transform = FrameTransform(size=tuple(ckpt["input_size"]), normalization=ckpt["normalization"])
        self.calibrated = cfg.calibrated and model.calibrated

    @torch.no_grad()  # not inference_mode: MKD's maps need input gradients, which it enables itself
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised input ``(B, 3, H, W)`` -> (scores ``(B,)``, anomaly maps ``(B, h, w)``), float32. With
        calibration the map is standardised per position and the score is its maximum."""
        x = to_device(x, self.device)
        with autocast(self.device, self.dtype):
            scores, amap = self.model.score_and_map(x)
        scores, amap = scores.float(), amap.float()
        if self.calibrated:
            amap = self.model.calibrate_map(amap)
            scores = frame_scores(amap)
        return scores, amap

    def downsample(self, amap: torch.Tensor) -> torch.Tensor:
        """Anomaly map at the finest-level stride -> one value per ``map_stride`` input pixels (the maximum, so
        a saved map's maximum is still the frame score and shares its scale and thresholds)."""
        factor = max(1, self.cfg.map_stride // self.model.stride)
        return F.max_pool2d(amap.unsqueeze(1), factor, ceil_mode=True).squeeze(1) if factor > 1 else amap


def score_clips(
    scorer: Scorer, clips: Sequence[Clip], out: Path | str, overwrite: bool = False, progress: bool = True,
    is_done: Callable[[Clip], bool] | None = None, on_done: Callable[[Clip], None] | None = None,
) -> dict[str, np.ndarray]:
    """Score every frame of ``clips``; write ``out/scores/<clip>.npy`` (and maps). Returns ``{clip: scores}``.
    Clips for which ``is_done`` is true (default: a scores file exists) are skipped unless ``overwrite``;
    ``on_done(clip)`` runs as each clip's files are written (the caller's bookkeeping for resuming)."""
    out = Path(out)
    names = [c.name for c in clips]
    if len(set(names)) != len(names):
        raise ValueError("clip names must be unique within one run; got duplicates")
    done = is_done or (lambda c: (out / "scores" / f"{c.name}.npy").exists())
    todo = [c for c in clips if overwrite or not done(c)]
    results = {c.name: np.load(out / "scores" / f"{c.name}.npy") for c in clips if c not in todo}
    if not todo:
        return results
    stream = FrameStream(todo, scorer.transform, batch_size=scorer.cfg.batch_size)
    loader = make_loader(stream, scorer.cfg.num_workers, pin_memory=scorer.device.type == "cuda")
    by_name = {c.name: c for c in todo}
    pending: dict[str, dict] = {}  # clip -> {"scores": (T,) array, "maps": (T, h, w) array | None, "done": int}
    t0, n = time.perf_counter(), 0
    with tqdm(total=sum(c.num_frames for c in todo), desc="scoring", unit="frame", disable=not progress) as bar:
        for batch in loader:
            name, index = batch["clip"][0], batch["index"].numpy()
            clip = by_name[name]
            scores, amap = scorer(batch["frames"])
            entry = pending.setdefault(name, {"scores": np.empty(clip.num_frames, np.float32), "maps": None, "done": 0})
            entry["scores"][index] = scores.cpu().numpy()
            if scorer.cfg.save_maps:
                small = scorer.downsample(amap).half().cpu().numpy()
                if entry["maps"] is None:
                    entry["maps"] = np.empty((clip.num_frames, *small.shape[1:]), np.float16)
                entry["maps"][index] = small
            entry["done"] += len(index)
            n += len(index)
            bar.update(len(index))
            if entry["done"] == clip.num_frames:
                results[name] = _flush(clip, pending.pop(name), out)
                if on_done is not None:
                    on_done(clip)
    if pending:
        short = {k: v["done"] for k, v in pending.items()}
        raise RuntimeError(f"scoring ended with incomplete clips (frames scored): {short}")
    if progress:
        secs = time.perf_counter() - t0
        print(f"scored {n} frames of {len(todo)} clips in {secs:.1f}s ({n / secs:.1f} frames/s) -> {out / 'scores'}")
    return results


def _flush(clip: Clip, entry: dict, out: Path) -> np.ndarray:
    if entry["maps"] is not None:
        save_npy(entry["maps"], out / "maps" / f"{clip.name}.npy")
    else:  # a map left by an earlier scoring would no longer match these scores
        (out / "maps" / f"{clip.name}.npy").unlink(missing_ok=True)
    save_npy(entry["scores"], out / "scores" / f"{clip.name}.npy")  # scores last: their presence marks the clip done
    return entry["scores"]
