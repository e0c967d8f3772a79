"""Speed: how fast things move, from dense optical flow, judged against the normal speeds at the same image row.

A fixed camera's anomalies are mostly objects doing the wrong thing, and most of those move at the wrong speed (a
bicycle, a skateboard, a cart or a runner among walkers). The student-teacher pyramid sees what things look like;
its motion branch predicts features, not speed. :class:`SpeedCue` adds the speed itself, with no weights and
no training, only statistics of normal footage:

- Flow: OpenCV's DIS optical flow between the previous frame and this one, grey, at the model's input size
  (:data:`DIS`). Only the past is read: frame ``t`` uses frames ``t - 1`` and ``t``; a stream's first frame (or
  the first after a gap) has no past, so its speed is unknown (NaN), not zero: the fusion gives such a frame the
  cue's normal mean (0 once standardised), no evidence either way, and the statistics leave it out. (Scored as
  zero, a first frame was 7 standard deviations more normal than any normal frame; most Ped2 test clips open with
  their anomaly already in view.)
- Cells: the flow's magnitude (pixels per frame) averaged over the anomaly map's cells (``stride`` pixels), then
  over ``cell`` x ``cell`` pixels (``model.speed_cell``): about the size of a person at the input sizes the
  pipelines choose, so one mover fills a cell and a lone noisy pixel does not.
- Rows: a cell's speed is divided by the fast end of normal speeds on its image row (:attr:`row_ref`: the
  99.9th percentile over normal training frames of the row's fastest cell, plus :data:`FLOOR`). On a fixed camera
  looking down at a ground plane the apparent size and speed of the same walker grow with the image row
  (perspective); the row is the part of a position that perspective acts on, and a row collects far more normal
  movers than one cell, so its statistic is steady on a few thousand frames. Two consequences of the same
  geometry for footage that does not show every row busy (a few minutes of one camera seldom does):
  perspective never makes the fast end fall toward the camera, so from the farthest row with movement (its
  fastest cell above :data:`MOVING` in at least :data:`SEEN` of the normal frames) down, a row's reference is
  the largest fast end of the rows with movement at or above it; a row with too little movement has no fast end
  of its own there (a row nearer the camera than anyone walked during training takes the fastest from above).
  Rows above the farthest one with movement keep their own (near the floor): whatever moves that far away moves
  slowly. Without this, a walker on a row that training saw empty is as anomalous as a cyclist.
- Fusion: the cue's frame scores are standardised by their mean and standard deviation on normal hold-out frames
  (not the frames ``row_ref`` came from), as the model's own map is (:meth:`set_stats`); the fused map is their
  maximum (or sum: ``model.fusion``), computed by :class:`vad.runtime.scorer.Scorer` beside whatever runs the network
  (torch or an exported copy), so export, int8 copies, ``vad watch`` and ``vad serve`` score with it alike.

Measured on UCSD Ped2's development half and the campus benches: docs/methods.md ("Speed").
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import cv2
import numpy as np
import torch
from torch import nn

# DIS optical flow, the "fast" preset's patches and iterations at the finest scale (1: the full input resolution).
# People 20-40 px tall move 1-4 px a frame at 10 fps; the presets that stop at half resolution (fast, ultrafast)
# lose most of a walker's legs and a bicycle's wheels (docs/methods.md measures each).
DIS = {"finest_scale": 1, "patch_size": 8, "patch_stride": 4, "gradient_descent_iterations": 16,
       "variational_refinement_iterations": 5}
FLOOR = 0.5  # px/frame added to every row's reference: DIS's jitter on still background is below half a pixel
ROW_PERCENTILE = 99.9  # the fast end of a row's normal speeds (its fastest cell, per normal frame)
MOVING = 0.75  # px/frame: a cell that moves (above the jitter FLOOR allows for)
SEEN = 0.01  # a row has a reference when its fastest cell moves in at least this share of the normal frames


def make_flow() -> cv2.DISOpticalFlow:
    """A DIS optical flow object with the :data:`DIS` settings (one per thread: it is not thread-safe)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    dis.setFinestScale(DIS["finest_scale"])
    dis.setPatchSize(DIS["patch_size"])
    dis.setPatchStride(DIS["patch_stride"])
    dis.setGradientDescentIterations(DIS["gradient_descent_iterations"])
    dis.setVariationalRefinementIterations(DIS["variational_refinement_iterations"])
    return dis


def cell_speed(flow: cv2.DISOpticalFlow, prev: np.ndarray | None, cur: np.ndarray, size: tuple[int, int],
               cell_cells: int) -> np.ndarray:
    """Grey uint8 frames ``(H, W)`` -> the mean speed (input pixels per frame) over cells: ``(h, w)`` = ``size``
    (the anomaly map's grid), each the mean over ``cell_cells`` x ``cell_cells`` grid cells around it (at the
    edges, of those inside). ``prev`` ``None``: no past, the speed unknown (NaN)."""
    h, w = size
    if prev is None:
        return np.full(size, np.nan, np.float32)
    uv = flow.calc(prev, cur, None)  # (H, W, 2) float32
    speed = cv2.magnitude(uv[..., 0], uv[..., 1])
    grid = cv2.resize(speed, (w, h), interpolation=cv2.INTER_AREA)
    if cell_cells > 1:  # normalised box filter; at the edges the reflected cells stand in for missing ones
        grid = cv2.blur(grid, (cell_cells, cell_cells), borderType=cv2.BORDER_REFLECT)
    return grid


class SpeedCue(nn.Module):
    """Speed of motion against the normal speeds of its image row; see the module docstring. Holds the statistics
    only (buffers: saved with the model); the flow runs in :class:`vad.runtime.scorer.Scorer`, per stream."""

    def __init__(self, cell: int, stride: int, fusion: str = "max") -> None:
        super().__init__()
        if fusion not in ("max", "sum"):
            raise ValueError(f"unknown model.fusion {fusion!r}; expected max or sum")
        self.fusion = fusion
        if cell < stride:
            raise ValueError(f"model.speed_cell ({cell} px) must be at least the anomaly map's stride ({stride} px)")
        self.cell = cell
        self.stride = stride
        self.register_buffer("row_ref", torch.empty(0))  # (h,) px/frame, per map row (fit_rows)
        # Mean and standard deviation of normal hold-out frame scores: [model's map, speed] (set_stats)
        self.register_buffer("loc", torch.full((2,), float("nan")))
        self.register_buffer("scale", torch.full((2,), float("nan")))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """A saved ``row_ref`` has the rows of the footage it was fitted on: take its size before loading it."""
        ref = state_dict.get(prefix + "row_ref")
        if ref is not None:
            self.row_ref = torch.empty_like(ref, device=self.row_ref.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def cells(self) -> int:
        """The averaging window in map cells (odd, at least 1)."""
        k = max(1, round(self.cell / self.stride))
        return k if k % 2 else k + 1

    @property
    def ready(self) -> bool:
        return bool(self.row_ref.numel()) and bool(torch.isfinite(self.loc).all() and torch.isfinite(self.scale).all())

    def fit_rows(self, speeds: np.ndarray) -> None:
        """The rows' references from cell speeds ``(N, h, w)`` of normal training frames (those without a past,
        NaN, left out)."""
        if speeds.ndim == 3:
            speeds = speeds[~np.isnan(speeds).any((1, 2))]
        if speeds.ndim != 3 or len(speeds) < 2:
            raise ValueError(f"the speed cue's rows need cell speeds of at least 2 frames (N, h, w); got "
                             f"{speeds.shape}")
        fastest = speeds.max(2)  # (N, h)
        ref = np.percentile(fastest, ROW_PERCENTILE, axis=0)
        seen = (fastest > MOVING).mean(0) >= SEEN
        if seen.any():  # from the farthest row with movement down: the fastest of the rows with movement so far
            first = int(np.argmax(seen))
            ref[first:] = np.maximum.accumulate(np.where(seen, ref, 0.0)[first:])
        self.row_ref = torch.as_tensor(ref + FLOOR, dtype=torch.float32)

    def relative(self, speeds: torch.Tensor) -> torch.Tensor:
        """Cell speeds ``(B, h, w)`` -> each divided by its row's reference (the cue's raw map)."""
        if speeds.shape[-2] != len(self.row_ref):
            raise ValueError(f"the speed cue was fitted on maps of {len(self.row_ref)} rows; got {speeds.shape[-2]}")
        return speeds / self.row_ref.to(speeds.device)[:, None]

    def set_stats(self, base: torch.Tensor, speed: torch.Tensor) -> None:
        """Standardise by normal hold-out frame scores: ``base`` the model's ``(N,)``, ``speed`` the cue's ``(N,)``
        (NaN for a frame without a past: left out)."""
        speed = speed[~torch.isnan(speed)]
        if len(base) < 2 or len(speed) < 2:
            raise ValueError("the speed cue's statistics need at least 2 hold-out frames")
        loc = torch.stack([base.float().mean(), speed.float().mean()])
        scale = torch.stack([base.float().std(), speed.float().std()]).clamp_min(1e-6)
        self.loc, self.scale = loc.to(self.loc.device), scale.to(self.scale.device)

    def fuse(self, amap: torch.Tensor, relative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's map ``(B, h, w)`` and the cue's raw map -> (fused map, the cue's standardised frame score
        ``(B,)``): each standardised, then the maximum (``model.fusion: sum``: the sum). A frame without a past (NaN)
        has the cue's normal mean, 0: the model's map alone decides."""
        if not self.ready:
            raise RuntimeError("this model's speed cue has no statistics (fitted at the end of training)")
        loc, scale = self.loc.to(amap.device), self.scale.to(amap.device)
        base = (amap - loc[0]) / scale[0]
        speed = ((relative.to(amap.device) - loc[1]) / scale[1]).nan_to_num_(0.0)
        fused = base + speed if self.fusion == "sum" else torch.maximum(base, speed)
        return fused, speed.flatten(1).amax(1)


class SpeedStreams:
    """The speed cue's side of scoring streams: per stream the last grey frame and the index of the frame after it;
    frames of one stream or of several (cameras) in a batch, each reading its own stream's previous frame (a
    stream's first frame, or one after a gap, has none: its speed unknown, NaN)."""

    def __init__(self, cue: SpeedCue, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.cue = cue
        self._weights = [s * 255 / 3 for s in std]  # grey (0-255) from a normalised frame: sum_c x_c * w_c + offset
        self._offset = sum(mean) * 255 / 3
        self._last: dict[str, tuple[np.ndarray, int]] = {}
        self._flow = make_flow()
        self._worker: ThreadPoolExecutor | None = None  # one thread: the flow while the network runs

    def submit(self, grey: np.ndarray, streams: list[str], firsts: list[int], size: tuple[int, int]
               ) -> Future:
        """:meth:`cell_speeds` relative to the rows (a ``(B, *size)`` tensor) on the cue's own thread, so that the
        optical flow (OpenCV, which releases the interpreter's lock) runs while the network does. One batch at a
        time: the caller takes the result before it submits the next."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="vad-speed")
        return self._worker.submit(
            lambda: self.cue.relative(torch.from_numpy(self.cell_speeds(grey, streams, firsts, size))))

    def grey(self, x: torch.Tensor) -> np.ndarray:
        """Normalised frames ``(B, 3, H, W)`` -> grey uint8 ``(B, H, W)`` on the host (the frames the model saw)."""
        # the mean of the channels undone, (x_c * std_c + mean_c) / 3 summed, as one weighted sum (4x faster)
        v = x[:, 0].float() * self._weights[0]
        v.add_(x[:, 1], alpha=self._weights[1]).add_(x[:, 2], alpha=self._weights[2]).add_(self._offset)
        return v.round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()

    def cell_speeds(self, grey: np.ndarray, streams: list[str], firsts: list[int], size: tuple[int, int]
                    ) -> np.ndarray:
        """Cell speeds ``(B, *size)`` of grey frames ``(B, H, W)``, frame ``j`` being frame ``firsts[j]`` of stream
        ``streams[j]``; remembers each stream's last frame."""
        out = np.empty((len(grey), *size), np.float32)
        for j, (s, f) in enumerate(zip(streams, firsts, strict=True)):
            kept = self._last.get(s)
            prev = kept[0] if kept is not None and kept[1] == f else None
            out[j] = cell_speed(self._flow, prev, grey[j], size, self.cue.cells)
            self._last[s] = (grey[j], f + 1)
        return out

    def remember(self, grey: np.ndarray, stream: str, first: int) -> None:
        """Read frames ``first ..`` of ``stream`` as the past of the frames after them (their speeds not needed)."""
        if len(grey):
            self._last[stream] = (grey[-1], first + len(grey))

    def forget(self, stream: str | None = None) -> None:
        if stream is None:
            self._last.clear()
        else:
            self._last.pop(stream, None)
