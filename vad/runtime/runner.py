"""What runs a model for the scorer: torch (eager or ``torch.compile``-d, in the faster memory layout) or an exported
runtime (:class:`vad.runtime.export.Runtime`), called the same way (:meth:`Runner.run`)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from functools import partial

import torch

from vad.config import ScoreConfig
from vad.device import amp_dtype, autocast
from vad.errors import ConfigError
from vad.models import AnomalyModel
from vad.runtime.pasts import PastPlan

COMPILE_MIN_FRAMES = 5000
_LAYOUTS: dict[tuple, torch.memory_format] = {}  # the faster memory layout on this CPU per kind of model and input


class Runner:
    """Runs ``model`` (on ``device``, under ``cfg``) with torch, or with a runtime after :meth:`use`."""

    def __init__(self, model: AnomalyModel, cfg: ScoreConfig, device: torch.device) -> None:
        if cfg.compile and model.method == "mkd":
            raise ConfigError("score.compile does not support mkd (its maps take input gradients); "
                              "set score.compile=false")
        self.model, self.cfg, self.device = model, cfg, device
        # The memory layout the model runs in: measured on the first full batch on a CPU (_tune_layout), as the
        # faster of channels-last and contiguous differs between CPUs and backbones; channels-last on a GPU.
        self.layout = torch.channels_last if device.type == "cuda" else None
        # What runs the model (torch, or a runtime) and its precision: set by use().
        self.runtime, self.dtype, self.compiled = None, None, False
        self._forward: Callable = model.score_and_map  # frame models
        self._step: Callable | None = None  # models with a past

    def use(self, runtime) -> None:
        """Run the model with ``runtime`` (an exported copy) from now on; ``None``: with torch again."""
        self.runtime, self.compiled = runtime, False
        if runtime is not None:
            self.dtype, self._forward, self._step = None, runtime.forward, runtime.step
            return
        self.dtype = amp_dtype(self.cfg.amp, self.device)
        self._forward, self._step = self.model.score_and_map, getattr(self.model, "step", None)
        if self.cfg.compile:
            self.compile()

    def compile(self) -> None:
        """``torch.compile`` the model (one static batch shape: short batches are padded). The first batch of each
        input size compiles (about a minute on 2 CPU cores); after that STPM scored 1.5x faster end to end
        there (benchmarks/throughput.py). Needs a C/C++ compiler (inductor)."""
        if not self.compiled and self.runtime is None:
            self.layout = self.layout or torch.channels_last  # one graph: the layout is not tuned
            if self.model.context:
                self._step = torch.compile(self.model.step, dynamic=False)
            else:
                self._forward = torch.compile(self.model.score_and_map, dynamic=False)
            self.compiled = True

    def compiles(self, frames: int) -> bool:
        """Whether a job of ``frames`` frames is compiled: ``score.compile``, or by default (None) when it has at
        least ``COMPILE_MIN_FRAMES`` (compiling costs about what 2,000 frames gain on a 2-core CPU), the method
        supports it and a C++ compiler is installed (inductor needs one)."""
        if self.runtime is not None:
            return False
        if self.cfg.compile is not None:
            return self.cfg.compile
        return (frames >= COMPILE_MIN_FRAMES and self.model.method != "mkd"
                and any(shutil.which(cc) for cc in ("c++", "g++", "clang++")))

    def run(self, x: torch.Tensor, plan: PastPlan | None = None) -> tuple:
        """The model's raw outputs for frames ``x`` on the device: ``(scores, maps)`` of a frame model (or of
        windows), ``(scores, maps, branches, features)`` of a step with its past ``plan``; rows past ``len(x)`` are
        padding."""
        n = len(x)
        x = self._pad(x)
        call = self._forward
        if plan is not None:
            if len(x) > n:  # padded rows read the last frame's past
                plan.index = torch.cat([plan.index, plan.index[-1:].expand(len(x) - n, -1)])
            call = partial(self._step, pool=plan.pool, index=plan.index)
        if self.layout is None and self.runtime is None and n == self.cfg.batch_size:
            self._tune_layout(call, x)
        with autocast(self.device, self.dtype):
            return call(x.contiguous(memory_format=self.layout or torch.channels_last))

    def _tune_layout(self, call: Callable, x: torch.Tensor) -> None:
        """Time ``call(x)`` with the model and ``x`` channels-last and contiguous (after a warm-up each) and keep the
        faster layout; measured once per process for a kind of model, input shape and thread count (so scorers in
        one process agree to the bit)."""
        teacher = getattr(self.model, "teacher", getattr(self.model, "expert", None))
        key = (type(self.model).__name__, type(getattr(teacher, "net", teacher)).__name__, tuple(x.shape),
               torch.get_num_threads(), self.dtype)
        if key not in _LAYOUTS:
            times = {}
            for layout in (torch.channels_last, torch.contiguous_format):
                self.model.to(memory_format=layout)
                xs = x.contiguous(memory_format=layout)
                with autocast(self.device, self.dtype):
                    call(xs)
                    t0 = time.perf_counter()
                    call(xs)
                    times[layout] = time.perf_counter() - t0
            _LAYOUTS[key] = min(times, key=times.get)
        self.layout = _LAYOUTS[key]
        self.model.to(memory_format=self.layout)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """A compiled model sees one static batch shape: a clip's last, shorter batch is padded with its last frame."""
        n = len(x)
        if not self.compiled or n >= self.cfg.batch_size:
            return x
        x = torch.cat([x, x[-1:].expand(self.cfg.batch_size - n, *x.shape[1:])])
        return x.contiguous(memory_format=torch.channels_last)  # the full batches' strides: no recompilation
