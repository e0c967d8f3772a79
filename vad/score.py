"""Batched scoring: frames -> anomaly maps -> per-frame scores, written per clip.

Output (``OUT`` is the run folder)::

    OUT/scores/<clip>.npy   (T,) float32 per-frame scores (the method's; STPM and RSTPM: max of the map)
    OUT/maps/<clip>.npy     (T, h, w) float16 anomaly maps at 1/map_stride of the input (with save_maps)

Each file is written atomically when its clip is complete; clips whose files already exist are skipped, so
an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vad.atomic import save_npy
from vad.config import ScoreConfig
from vad.device import amp_dtype, autocast, resolve_device, to_device
from vad.distributed import world
from vad.io.dataset import FrameStream, FrameTransform, make_loader
from vad.io.decode import decode_jpeg_files
from vad.io.records import Clip
from vad.models import AnomalyModel, frame_scores

COMPILE_MIN_FRAMES = 5000


class Scorer:
    """Wraps a trained model for inference: ``scorer(frames uint8 (B, 3, H, W)) -> (scores (B,), maps (B, h, w))``.

    The fast path (:meth:`batches`): a :class:`FrameStream` decodes in ``DataLoader`` workers while the model
    runs; on CUDA the workers send undecoded JPEG bytes or uint8 frames through pinned memory and the GPU
    decodes (nvJPEG), resizes and normalises them; the model runs channels-last under autocast (bf16 on CUDA and
    on CPUs with native bf16), optionally ``torch.compile``-d; results come back to the host one batch late, so
    the host's bookkeeping overlaps the device's next batch (a JPEG batch decoded on the GPU waits for the
    previous batch to finish: see :meth:`prepare`).
    """

    def __init__(self, model: AnomalyModel, ckpt: dict, cfg: ScoreConfig, device: str | torch.device = "auto") -> None:
        self.device = resolve_device(device)
        self.dtype = amp_dtype(cfg.amp, self.device, cpu_auto_bf16=True)
        self.cfg = cfg
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.transform = FrameTransform(size=tuple(ckpt["input_size"]), normalization=ckpt["normalization"])
        self.per_position = cfg.per_position and model.has_position_stats
        self.on_device = self.device.type == "cuda"  # decode JPEGs, resize and normalise on the GPU
        if cfg.compile and model.method == "mkd":
            raise ValueError("score.compile does not support mkd (its maps take input gradients); "
                             "set score.compile=false")
        self.compiled = False
        self._forward = model.score_and_map
        if cfg.compile:
            self.compile()

    def compile(self) -> None:
        """``torch.compile`` the model (one static batch shape: short batches are padded). The first batch of each
        input size compiles (about a minute on 2 CPU cores); after that STPM scored 1.5x faster end to end
        there (benchmarks/throughput.py). Needs a C/C++ compiler (inductor)."""
        if not self.compiled:
            self._forward = torch.compile(self.model.score_and_map, dynamic=False)
            self.compiled = True

    def compiles(self, frames: int) -> bool:
        """Whether a job of ``frames`` frames is compiled: ``score.compile``, or by default (None) when it has at
        least ``COMPILE_MIN_FRAMES`` (compiling costs about what 2,000 frames gain on a 2-core CPU), the method
        supports it and a C++ compiler is installed (inductor needs one)."""
        if self.cfg.compile is not None:
            return self.cfg.compile
        return (frames >= COMPILE_MIN_FRAMES and self.model.method != "mkd"
                and any(shutil.which(cc) for cc in ("c++", "g++", "clang++")))

    @torch.no_grad()  # not inference_mode: MKD's maps need input gradients, which it enables itself
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised input ``(B, 3, H, W)`` -> (scores ``(B,)``, anomaly maps ``(B, h, w)``), float32. With
        calibration the map is standardised per position and the score is its maximum."""
        x = to_device(x, self.device)
        n = len(x)
        if self.compiled and n < self.cfg.batch_size:  # one static shape: a clip's last batch is padded
            x = torch.cat([x, x[-1:].expand(self.cfg.batch_size - n, *x.shape[1:])])
            x = x.contiguous(memory_format=torch.channels_last)  # the full batches' strides: no recompilation
        with autocast(self.device, self.dtype):
            scores, amap = self._forward(x)
        scores, amap = scores[:n].float(), amap[:n].float()
        if self.per_position:
            amap = self.model.standardise_map(amap)
            scores = frame_scores(amap)
        return scores, amap

    def stream(self, clips: Sequence[Clip]) -> FrameStream:
        """Batches of ``clips`` as this scorer wants them: normalised on the CPU, or left for the GPU."""
        window = self.model.window  # a motion model's samples are windows of frames (decoded once, on the CPU)
        if self.on_device:
            return FrameStream(clips, None, batch_size=self.cfg.batch_size, jpeg_bytes=window == 1, window=window)
        return FrameStream(clips, self.transform, batch_size=self.cfg.batch_size, window=window)

    def prepare(self, batch: dict) -> torch.Tensor:
        """A :meth:`stream` batch -> normalised frames (on the device when decoded or transformed there)."""
        if "jpeg" in batch:
            if self.device.type == "cuda":
                # torchvision's nvJPEG writes from its own stream into memory allocated on ours, without waiting
                # for our queued work: let the previous batch finish first (pytorch/vision#9606).
                torch.cuda.current_stream(self.device).synchronize()
            data = list(torch.split(batch["jpeg"], batch["sizes"]))
            frames = decode_jpeg_files(batch["paths"], data, self.device)
        else:
            frames = batch["frames"].to(self.device, non_blocking=True)
        return self.transform(frames) if frames.dtype == torch.uint8 else frames  # __call__ makes it channels-last

    def batches(self, loader, maps: bool = False) -> Iterator[tuple[dict, np.ndarray, np.ndarray | None]]:
        """``(batch, scores (B,), maps (B, h, w) float16 at map_stride or None)`` for every batch of ``loader``,
        on the host. Each batch's results are copied back asynchronously and handed out after the next batch has
        been queued on the device."""
        pending = None
        for batch in loader:
            scores, amap = self(self.prepare(batch))
            small = self.downsample(amap).half() if maps else None
            host = [t if t is None else t.to("cpu", non_blocking=True) for t in (scores, small)]
            out = (batch, *host)
            event = torch.cuda.Event() if self.device.type == "cuda" else None
            if event is not None:
                event.record(torch.cuda.current_stream(self.device))
            if pending is not None:
                yield self._host(*pending)
            pending = (out, event)
        if pending is not None:
            yield self._host(*pending)

    @staticmethod
    def _host(out: tuple, event) -> tuple[dict, np.ndarray, np.ndarray | None]:
        if event is not None:
            event.synchronize()
        batch, scores, small = out
        return batch, scores.numpy(), None if small is None else small.numpy()

    def downsample(self, amap: torch.Tensor) -> torch.Tensor:
        """Anomaly map at the finest-level stride -> one value per ``map_stride`` input pixels (the maximum, so
        a saved map's maximum is still the frame score and shares its scale and thresholds)."""
        factor = max(1, self.cfg.map_stride // self.model.stride)
        return F.max_pool2d(amap.unsqueeze(1), factor, ceil_mode=True).squeeze(1) if factor > 1 else amap

    @property
    def num_workers(self) -> int:
        """``score.num_workers``, or by default: on CUDA up to 8 decode workers (one core left for the main
        process); on a CPU none (decoding in the main process between batches, measured faster than workers
        competing for the same cores: benchmarks/throughput.py)."""
        if self.cfg.num_workers is not None:
            return self.cfg.num_workers
        return min(8, max(1, (os.cpu_count() or 2) - 1)) if self.device.type == "cuda" else 0


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
    if scorer.compiles(sum(c.num_frames for c in todo)):
        scorer.compile()
    loader = make_loader(scorer.stream(todo), scorer.num_workers, pin_memory=scorer.device.type == "cuda")
    by_name = {c.name: c for c in todo}
    pending: dict[str, dict] = {}  # clip -> {"scores": (T,) array, "maps": (T, h, w) array | None, "done": int}
    t0, n = time.perf_counter(), 0
    progress = progress and world().main  # under torchrun rank 0 reports
    with tqdm(total=sum(c.num_frames for c in todo), desc="scoring", unit="frame", disable=not progress) as bar:
        for batch, scores, small in scorer.batches(loader, maps=scorer.cfg.save_maps):
            name, index = batch["clip"][0], batch["index"].numpy()
            clip = by_name[name]
            entry = pending.setdefault(name, {"scores": np.empty(clip.num_frames, np.float32), "maps": None, "done": 0})
            entry["scores"][index] = scores
            if small is not None:
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
