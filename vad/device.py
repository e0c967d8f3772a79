"""Where tensors run: the device choice, autocast dtypes and batch moves, shared by training and scoring."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from vad.errors import UsageError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' requested but no CUDA device is available; use --device cpu or auto")
    return device


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (``/proc/cpuinfo``; none where it cannot be read: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(w for ln in text.splitlines() if ln.startswith("flags") for w in ln.split(":", 1)[1].split())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (Intel AMX): there bf16 autocast about doubles STPM's
    throughput (benchmarks/throughput.py); elsewhere bf16 is emulated and slower than float32."""
    return "amx_bf16" in cpu_flags()


def cpu_has_bf16_instructions() -> bool:
    """Whether this CPU has bf16 dot products but not AMX (AVX512-BF16: AMD Zen 4, Intel Cooper Lake): whether bf16
    training beats float32 there depends on the CPU, so training measures it (:func:`vad.offline.train` setup)."""
    return "avx512_bf16" in cpu_flags() and not cpu_has_native_bf16()


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``setting`` (train.amp, score.amp). ``auto``: bf16 on CUDA, and on a CPU with native
    bf16 (AMX; training keeps its depthwise convolutions in float32: :func:`vad.models.depthwise_in_float32`);
    else float32."""
    options = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
    if setting not in options:
        raise ValueError(f"unknown amp setting {setting!r}; expected one of {sorted(options)}")
    if setting == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    return options[setting]


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``, channels-last (the layout the models run fastest in); non-blocking from pinned memory."""
    return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
