"""Batched scoring: frames -> anomaly maps -> per-frame scores, written per clip (:func:`score_clips`).

Output (``OUT`` is the run folder)::

    OUT/scores/<clip>.npy   (T,) float32 per-frame scores (the method's; STPM and RSTPM: max of the map)
    OUT/maps/<clip>.npy     (T, h, w) float16 anomaly maps at 1/map_stride of the input (with save_maps)

Each file is written atomically when its clip is complete: an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vad.atomic import save_npy
from vad.device import autocast, to_device
from vad.distributed import world
from vad.errors import DecodeError
from vad.io.dataset import FrameStream, make_loader, read_ahead
from vad.io.decode import decode_jpeg_files
from vad.io.records import Clip, with_frames
from vad.models import frame_scores
from vad.progress import progress_bar
from vad.runs import RunFolder

log = logging.getLogger(__name__)
READ_AHEAD = True  # benchmarks/scoring_overhead.py measures without it


def stream(scorer, clips: Sequence[Clip], ranges: dict[str, tuple[int, int]] | None = None,
           partial: bool = False) -> FrameStream:
    """Batches of ``clips`` (``ranges``: frames ``[start, stop)`` of some) as ``scorer`` wants them: single
    frames, normalised on the CPU or left for the GPU; a range inside a clip is preceded by its real past.
    ``partial``: a video that decodes fewer frames than its container declares ends early instead of failing."""
    common = {"batch_size": scorer.cfg.batch_size, "ranges": ranges, "partial": partial,
              "past": max(scorer.model.context, scorer.speeds is not None)}
    if scorer.on_device:
        return FrameStream(clips, None, jpeg_bytes=True, **common)
    return FrameStream(clips, scorer.transform, **common)


def to_frames(scorer, batch: dict) -> torch.Tensor:
    """A :func:`stream` batch -> normalised frames (on the device when decoded or transformed there)."""
    if "jpeg" in batch:
        if scorer.device.type == "cuda":
            # torchvision's nvJPEG writes from its own stream into memory allocated on ours, without waiting
            # for our queued work: let the previous batch finish first (pytorch/vision#9606).
            torch.cuda.current_stream(scorer.device).synchronize()
        data = list(torch.split(batch["jpeg"], batch["sizes"]))
        frames = decode_jpeg_files(batch["paths"], data, scorer.device)
    else:
        frames = batch["frames"].to(scorer.device, non_blocking=True)
    return scorer.transform(frames) if frames.dtype == torch.uint8 else frames  # the scorer makes it channels-last


def num_workers(scorer) -> int:
    """``score.num_workers``, or by default: on CUDA up to 8 decode workers (one core left for the main
    process); on a CPU none (decoding in the main process between batches, measured faster than workers
    competing for the same cores: benchmarks/throughput.py)."""
    if scorer.cfg.num_workers is not None:
        return scorer.cfg.num_workers
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if scorer.device.type == "cuda" else 0


@torch.no_grad()
def outputs(scorer, clips: Sequence[Clip], ranges: dict[str, tuple[int, int]] | None,
            branches: bool = False) -> dict[str, torch.Tensor]:
    """Raw outputs over the frames of ``clips`` (``ranges`` of them), run as ``scorer`` runs the model (device,
    autocast, eager torch), concatenated: ``{"scores": (N,), "maps": (N, h, w)}``, or a fused model's branch maps
    before fusion (``branches``), float32 on the CPU (for the normal reference: :mod:`vad.runtime.reference`). With
    a speed cue, also its raw maps (``"speed"``), not fused (the reference fits the fusion)."""
    loader = make_loader(stream(scorer, clips, ranges), num_workers(scorer),
                         pin_memory=scorer.device.type == "cuda")
    model, pasts, out = scorer.model, scorer.pasts, {}
    pasts.forget()
    for batch in loader:
        x = to_device(to_frames(scorer, batch), scorer.device)
        clip, first = batch["clip"][0], int(batch["index"][0])
        if batch.get("context"):
            pasts.prime(x, clip, first)
            continue
        with autocast(scorer.device, scorer.runner.dtype):
            if model.context:
                plan = pasts.plan(clip, first, x)
                maps, feats = model.step_branch_maps(x, plan.pool, plan.index)
                pasts.remember(plan, feats)
                no_past = model.no_past(plan.pool, plan.index)
                fused = None if branches else model.fuse(maps, no_past)
                got = _unknown_motion(maps, no_past) if branches else {"scores": frame_scores(fused), "maps": fused}
            elif branches:
                got = model.branch_maps(x)
            else:
                got = dict(zip(("scores", "maps"), model.score_and_map(x), strict=True))
        if scorer.speeds is not None:
            size = tuple(next(iter(got.values())).shape[-2:]) if branches else tuple(got["maps"].shape[-2:])
            got["speed"] = scorer.speed_maps(scorer.speeds.grey(x), clip, first, size)
        for k, v in got.items():
            out.setdefault(k, []).append(v.float().cpu())
    pasts.forget()
    return {k: torch.cat(v) for k, v in out.items()}


def _unknown_motion(maps: dict[str, torch.Tensor], no_past: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw branch maps with the motion branch NaN (unknown) on frames without a past: the reference leaves them out."""
    return {**maps, "motion": maps["motion"].masked_fill(no_past[:, None, None], float("nan"))}


def cell_speeds(scorer, runs: Sequence[tuple[Clip, tuple[int, int]]]) -> np.ndarray:
    """The speed cue's cell speeds ``(N, h, w)`` (before its rows' references) over runs of consecutive frames
    ``[(clip, (start, stop))]`` (for :meth:`vad.models.speed.SpeedCue.fit_rows`); a run's first frame reads
    its real previous frame where it has one."""
    h, w = (s // scorer.model.stride for s in scorer.transform.size)
    speeds, out = scorer.speeds, []
    for clip, (a, b) in runs:
        scorer.pasts.forget()
        for batch in make_loader(stream(scorer, [clip], {clip.name: (a, b)}), 0):
            grey = speeds.grey(to_frames(scorer, batch))
            first = int(batch["index"][0])
            if batch.get("context"):
                speeds.remember(grey, clip.name, first)
                continue
            n = len(grey)
            out.append(speeds.cell_speeds(grey, [clip.name] * n, list(range(first, first + n)), (h, w)))
    scorer.pasts.forget()
    return np.concatenate(out)


def batches(scorer, loader, maps: bool = False
            ) -> Iterator[tuple[dict, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """``(batch, scores (B,), maps (B, h, w) float16 at map_stride or None, branch scores (B, k) or None)`` for
    every batch of ``loader``, on the host. Each batch's results are copied back asynchronously and handed out
    after the next batch has been queued on the device. A loader without workers is read a batch ahead on a thread
    (:func:`vad.io.dataset.read_ahead`)."""
    pending = None
    for batch in read_ahead(loader) if READ_AHEAD and getattr(loader, "num_workers", 0) == 0 else loader:
        clip, first = batch["clip"][0], int(batch["index"][0])
        if batch.get("context"):
            scorer.pasts.prime(to_frames(scorer, batch), clip, first)
            continue
        scores, amap, branches = scorer(to_frames(scorer, batch), clip, first)
        small = downsample(scorer, amap).half() if maps else None
        host = [t if t is None else t.to("cpu", non_blocking=True) for t in (scores, small, branches)]
        out = (batch, *host)
        event = torch.cuda.Event() if scorer.device.type == "cuda" else None
        if event is not None:
            event.record(torch.cuda.current_stream(scorer.device))
        if pending is not None:
            yield _host(*pending)
        pending = (out, event)
    if pending is not None:
        yield _host(*pending)


def _host(out: tuple, event) -> tuple[dict, np.ndarray, np.ndarray | None, np.ndarray | None]:
    if event is not None:
        event.synchronize()
    batch, *arrays = out
    return batch, *(None if a is None else a.numpy() for a in arrays)


def downsample(scorer, amap: torch.Tensor) -> torch.Tensor:
    """Anomaly map at the finest-level stride -> one value per ``map_stride`` input pixels (the maximum, so
    a saved map's maximum is still the frame score and shares its scale and thresholds)."""
    factor = max(1, scorer.cfg.map_stride // scorer.model.stride)
    return F.max_pool2d(amap.unsqueeze(1), factor, ceil_mode=True).squeeze(1) if factor > 1 else amap


def score_clips(
    scorer, clips: Sequence[Clip], out: RunFolder | Path | str, overwrite: bool = False,
    progress: bool = True, is_done: Callable[[Clip], bool] | None = None,
    on_done: Callable[[Clip], None] | None = None,
) -> dict[str, np.ndarray]:
    """Score every frame of ``clips`` with ``scorer``; write each clip's scores (and maps) into run folder ``out``.
    Returns ``{clip: scores}``. Clips for which ``is_done`` is true (default: a scores file exists) are skipped
    unless ``overwrite``; ``on_done(clip)`` runs as each clip's files are written (the caller's bookkeeping for
    resuming). What was derived from a clip's earlier scores (its video, the run's metrics...) is deleted as its new
    scores are written (:meth:`RunFolder.invalidate`). An unlabelled video that decodes fewer frames than its
    container declares (a partly recorded file) is scored as far as it decodes, and said so."""
    run = out if isinstance(out, RunFolder) else RunFolder(out)
    names = [c.name for c in clips]
    if len(set(names)) != len(names):
        raise ValueError("clip names must be unique within one run; got duplicates")
    done = is_done or (lambda c: run.scores(c.name).exists())
    todo = [c for c in clips if overwrite or not done(c)]
    results = {c.name: np.load(run.scores(c.name)) for c in clips if c not in todo}
    if not todo:
        return results
    if scorer.runner.compiles(sum(c.num_frames for c in todo)):
        scorer.runner.compile()
    loader = make_loader(stream(scorer, todo, partial=True), num_workers(scorer),
                         pin_memory=scorer.device.type == "cuda")
    by_name = {c.name: c for c in todo}
    pending: dict[str, dict] = {}  # clip -> {"scores": (T,) array, "maps": (T, h, w) array | None, "done": int}
    t0, n, stale = time.perf_counter(), 0, []
    progress = progress and world().main  # under torchrun rank 0 reports

    def finish(clip: Clip, entry: dict) -> None:
        scorer.pasts.forget(clip.name)
        stale.extend(run.invalidate([clip.name]))
        results[clip.name] = _flush(clip, entry, run)
        if on_done is not None:
            on_done(clip)

    with progress_bar(total=sum(c.num_frames for c in todo), desc="scoring", unit="frame", progress=progress) as bar:
        for batch, scores, small, branches in batches(scorer, loader, maps=scorer.cfg.save_maps):
            name, index = batch["clip"][0], batch["index"].numpy()
            clip = by_name[name]
            entry = pending.setdefault(name, {"scores": np.empty(clip.num_frames, np.float32), "maps": None, "done": 0,
                                              "branches": None})
            _collect(entry, clip.num_frames, index, scores, small, branches)
            n += len(index)
            bar.update(len(index))
            if entry["done"] == clip.num_frames:
                finish(clip, pending.pop(name))
    for name, entry in pending.items():  # videos that decoded fewer frames than their containers declare
        finish(_partly_recorded(by_name[name], entry), entry)
    if progress:
        _log_scored(n, len(todo), time.perf_counter() - t0, run, stale)
    return results


def _collect(entry: dict, frames: int, index: np.ndarray, scores: np.ndarray, small: np.ndarray | None,
             branches: np.ndarray | None) -> None:
    """Put one batch's scores (and maps, branch scores) of a clip of ``frames`` frames at ``index`` in its entry."""
    entry["scores"][index] = scores
    if branches is not None:
        if entry["branches"] is None:
            entry["branches"] = np.empty((frames, branches.shape[1]), np.float32)
        entry["branches"][index] = branches
    if small is not None:
        if entry["maps"] is None:
            entry["maps"] = np.empty((frames, *small.shape[1:]), np.float16)
        entry["maps"][index] = small
    entry["done"] += len(index)


def _log_scored(n: int, clips: int, secs: float, run: RunFolder, stale: list[Path]) -> None:
    log.info(f"scored {n} frames of {clips} clips in {secs:.1f}s ({n / secs:.1f} frames/s) -> {run.scores_dir}")
    if stale:
        shown = ", ".join(p.name for p in stale[:4]) + (", ..." if len(stale) > 4 else "")
        log.info(f"note: removed {len(stale)} output(s) made from earlier scores ({shown}): evaluate and render "
                 "again to remake them")


def _partly_recorded(clip: Clip, entry: dict) -> Clip:
    """The clip of a video that ended after ``entry["done"]`` frames, cut to them (the entry too), with a note; an
    error when that cannot be (labelled clips, frame folders, frames missing in the middle)."""
    k = entry["done"]
    declared = clip.num_frames
    if clip.kind != "video" or clip.labels is not None or k == 0:
        what = "its labels count them all" if clip.labels is not None else "every frame must be scored"
        raise DecodeError(f"{clip.path}: {k} of {declared} frames decoded and scored; {what} (a truncated or "
                          "corrupt file?)")
    log.warning(f"note: {clip.path}: the container declares {declared} frames but {k} decode (a partly recorded "
                f"file?); scored those {k}, {declared - k} missing")
    for key in ("scores", "maps", "branches"):
        if entry[key] is not None:
            entry[key] = entry[key][:k]
    return with_frames(clip, k)


def _flush(clip: Clip, entry: dict, run: RunFolder) -> np.ndarray:
    for key, path in (("maps", run.maps(clip.name)), ("branches", run.branches(clip.name))):
        if entry[key] is not None:
            save_npy(entry[key], path)
        else:  # one left by an earlier scoring would no longer match these scores
            path.unlink(missing_ok=True)
    save_npy(entry["scores"], run.scores(clip.name))  # scores last: their presence marks the clip done
    return entry["scores"]
