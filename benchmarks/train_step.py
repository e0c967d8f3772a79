#!/usr/bin/env python3
"""Where a training step of the default model goes, per part and per precision, side by side in one run.

One batch (``--batch`` windows at the default model's input size, channels-last, the teacher's features computed
once beforehand as ``train.cache`` keeps them) goes through the student and the motion predictor with their losses
and backward passes, timed apart (median of ``--steps``), in:

- ``f32``: float32 (training's default on a CPU without AMX);
- ``bf16``: CPU autocast to bfloat16 throughout, depthwise convolutions too;
- ``bf16-predictor``: the predictor alone in bfloat16;
- ``bf16-depthwise-f32``: bfloat16 with the student's depthwise convolutions kept in float32
  (:func:`vad.models.depthwise_in_float32`: what ``train.amp`` bf16 does on a CPU, and ``auto`` on one with AMX).

The weights are not updated (no optimiser step): every setting runs the same function. Then a profile of one
step of ``--profile`` (a setting) by operator. The figures in docs/speed.md ("Training") come from:

    python benchmarks/train_step.py --profile bf16-depthwise-f32
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch import nn

from vad.config import ModelConfig
from vad.models import build_model, depthwise_in_float32
from vad.models.loss import stpm_loss
from vad.models.motion import motion_weighted_loss

SETTINGS = {"f32": (False, False, False), "bf16": (True, True, False), "bf16-predictor": (False, True, False),
            "bf16-depthwise-f32": (True, True, True)}  # (student in bf16, predictor in bf16, depthwise in f32)


def depthwise_f32(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose depthwise convolutions train in float32 under autocast (as training does on a CPU)."""
    import copy

    net = copy.deepcopy(net)
    depthwise_in_float32(net)
    return net


def step(student: nn.Module, predictor: nn.Module, x: torch.Tensor, teacher: tuple, setting: str) -> list[float]:
    """Seconds of (student forward, student backward, predictor forward, predictor backward)."""
    s16, p16, _ = SETTINGS[setting]
    past, now = teacher
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s16):
        loss = stpm_loss(now, student(x[:, -3:]))
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p16):
        loss = motion_weighted_loss(now, past[-1], predictor(past))
    t3 = time.perf_counter()
    loss.backward()
    t4 = time.perf_counter()
    return [t1 - t0, t2 - t1, t3 - t2, t4 - t3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=336)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--profile", choices=list(SETTINGS), help="profile one step of this setting by operator")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_height=args.height)).to(memory_format=torch.channels_last).train()
    x = torch.randn(args.batch, 3 * model.window, args.height, args.width).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        teacher = model.teacher_features(x)
    nets = {False: model.student, True: depthwise_f32(model.student)}
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__};"
          f" batch {args.batch} x {args.height}x{args.width}; seconds a step, median of {args.steps}")
    result = {}
    for setting in args.settings:
        student = nets[SETTINGS[setting][2]]
        step(student, model.predictor, x, teacher, setting)  # warm-up
        runs = [step(student, model.predictor, x, teacher, setting) for _ in range(args.steps)]
        med = [sorted(r)[len(r) // 2] for r in zip(*runs, strict=True)]
        result[setting] = dict(zip(("student_forward", "student_backward", "predictor_forward",
                                    "predictor_backward"), med, strict=True)) | {"total": sum(med)}
        print(f"{setting:20s} student forward {med[0]:.3f} backward {med[1]:.3f} | predictor forward {med[2]:.3f} "
              f"backward {med[3]:.3f} | total {sum(med):.3f}", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        student = nets[SETTINGS[args.profile][2]]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(student, model.predictor, x, teacher, args.profile)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
