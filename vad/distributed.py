"""Multi-process runs under ``torchrun``: process-group set-up, output from rank 0 only, and the shards.

``torchrun --nproc_per_node=N run_pipeline.py train|score|run ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`setup` joins them (nccl on CUDA, gloo on CPU), one GPU per local
rank. Training uses DistributedDataParallel over equal shares of the training frames (:func:`frame_shares`);
scoring gives each rank whole clips (:func:`shard_clips`) and rank 0 merges the results. Every rank reads
the data and the run folder, so on several nodes both must be on a shared filesystem.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from vad.errors import UsageError
from vad.io.records import Clip


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place in the process group (rank 0 of 1 when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def launched() -> bool:
    """Started by ``torchrun`` (or another launcher that sets ``WORLD_SIZE``) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "auto") -> tuple[World, str]:
    """Join the process group started by ``torchrun``; returns this rank's place and its device (``cuda:L`` for
    local rank L with CUDA, else ``cpu``). Ranks other than 0 print only errors (to stderr, marked with the rank);
    training and scoring show progress on rank 0 only."""
    w = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise UsageError("device 'cuda' requested but no CUDA device is available; use --device cpu or auto")
    gpu = 0
    if cuda:
        count = torch.cuda.device_count()
        if w.local_rank >= count and count != 1:
            raise UsageError(f"local rank {w.local_rank} has no GPU: this node has {count}; "
                             "use --nproc_per_node <= the GPU count")
        gpu = w.local_rank if w.local_rank < count else 0  # one visible GPU per process (e.g. SLURM tasks): it
        torch.cuda.set_device(gpu)
    if not dist.is_initialized():
        # Ranks wait at barriers for the rank with the longest clip and for rank 0's validation: far longer than
        # NCCL's 10-minute default can be. VAD_DIST_TIMEOUT_MIN sets it (default 6 hours).
        timeout = timedelta(minutes=float(os.environ.get("VAD_DIST_TIMEOUT_MIN", 360)))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    if not w.main:  # the usual torchrun convention (DeiT, MAE): one rank talks; its notes and errors still show
        logger = logging.getLogger("vad")
        logger.setLevel(logging.WARNING)
        for handler in logger.handlers:  # (a logger's own filters never see its children's records)
            handler.addFilter(_RankPrefix(w.rank))
    return w, f"cuda:{gpu}" if cuda else "cpu"


class _RankPrefix(logging.Filter):
    """Names the rank in front of what a rank other than 0 logs."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = f"{self.prefix}{record.msg}"
        return True


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world().world_size > 1:
        dist.barrier()


def shard_clips(clips: Sequence[Clip], rank: int, world_size: int) -> list[Clip]:
    """Rank ``rank``'s share of ``clips``, whole clips balanced by frame count (longest first, each to the least
    loaded rank); deterministic, so every rank computes the same partition. Order within a share is the input's."""
    load = [0] * world_size
    owner: dict[int, int] = {}
    for i in sorted(range(len(clips)), key=lambda i: (-clips[i].num_frames, i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += clips[i].num_frames
    return [c for i, c in enumerate(clips) if owner[i] == rank]


def frame_shares(ranges: dict[str, tuple[int, int]], rank: int, world_size: int) -> dict[str, tuple[int, int]]:
    """Rank ``rank``'s equal share of the frames in ``ranges`` (clip -> ``[start, stop)``, in order): the frames
    laid end to end and cut into ``world_size`` contiguous pieces of ``total // world_size`` frames (the last
    ``total % world_size`` frames are left out), so every rank steps through the same number of batches."""
    share = sum(b - a for a, b in ranges.values()) // world_size
    lo, hi = rank * share, (rank + 1) * share
    out, pos = {}, 0
    for name, (a, b) in ranges.items():
        first, last = max(lo, pos), min(hi, pos + b - a)
        if first < last:
            out[name] = (a + first - pos, a + last - pos)
        pos += b - a
    return out


def all_sum(values: Sequence[float], device: torch.device | str) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if world().world_size > 1:
        dist.all_reduce(t)
    return t.tolist()
