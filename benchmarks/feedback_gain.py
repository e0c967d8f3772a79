#!/usr/bin/env python3
"""What an operator's verdicts bought: scored runs before and after `vad adapt`, compared on the clips that were
*not* fed back (``--exclude``), so nothing the model learned from is counted.

For each run (both scored and evaluated with the same settings): raw micro frame AUC, normal frames inside events,
false alarm events (no anomalous frame inside), anomalous frames caught, at the default threshold of each run's own
normal reference; with the offline rule and the live (causal) rule. The last line is one JSON object.

    python benchmarks/feedback_gain.py --before runs/campus --after runs/campus-adapted --exclude 01_0002
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vad.config import EvalConfig, PostprocessConfig
from vad.metrics import micro_auc
from vad.offline.evaluate import clip_events, load_scored
from vad.runtime.postprocess import event_frames


def measure(run: Path, exclude: set[str], rule: str) -> dict:
    ev = EvalConfig(rule=rule)
    s = load_scored(run, PostprocessConfig(), ev, progress=False)
    names = [n for n in s.labels if n not in exclude]
    inside = {n: event_frames(len(s.raw[n]), clip_events(s, n, ev)) for n in names}
    y = np.concatenate([s.labels[n] for n in names]).astype(bool)
    flagged = np.concatenate([inside[n] for n in names])
    false = sum(1 for n in names for e in clip_events(s, n, ev) if not s.labels[n][e.start : e.end + 1].any())
    return {"clips": names, "raw_micro_auc": round(micro_auc({n: s.raw[n] for n in names},
                                                             {n: s.labels[n] for n in names}), 4),
            "normal_frames_in_events": round(float(flagged[~y].mean()), 4),
            "anomalous_frames_caught": round(float(flagged[y].mean()), 4), "false_alarm_events": false}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--exclude", nargs="*", default=[], help="clips fed back (left out of every figure)")
    args = ap.parse_args()
    out = {}
    for rule in ("offline", "causal"):
        for name, run in (("before", args.before), ("after", args.after)):
            out[f"{name}_{rule}"] = m = measure(run, set(args.exclude), rule)
            print(f"{rule:<8} {name:<7} AUC {m['raw_micro_auc']:.4f}  normal in events "
                  f"{m['normal_frames_in_events']:.1%}  false events {m['false_alarm_events']}  anomalous caught "
                  f"{m['anomalous_frames_caught']:.1%}  ({len(m['clips'])} clips)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
