#!/usr/bin/env python3
"""Event-threshold rules side by side on scored runs: what each does to the alarms a user sees.

Every rule draws its threshold from the run's normal hold-out frame scores only (the normal references); the test
labels only count the outcome. Rules:

- ``p99`` (the default, ``eval.threshold_percentile=99``), ``p99.9``, ``max``: percentiles of the hold-out scores;
- ``gpd-1e-3``: extreme-value fit, a generalised Pareto distribution fitted to the hold-out scores above their
  90th percentile (peaks over threshold), solved for a 0.1 % exceedance rate.

For each run and rule: the fraction of normal frames inside events, of anomalous frames caught, and false alarm
events (the evaluate stage's definitions, sigma and minimum event length from the defaults).

    python benchmarks/threshold_rules.py runs/campus-public runs/campus-interleaved

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import genpareto

from vad.config import EvalConfig, PostprocessConfig
from vad.offline.evaluate import alarm_report, load_scored
from vad.runtime.postprocess import events


def gpd_threshold(normal: np.ndarray, rate: float, tail: float = 0.9) -> float:
    """The score exceeded by a fraction ``rate`` of normal frames, from a generalised Pareto fit to the
    exceedances over the ``tail`` quantile (``rate < 1 - tail``)."""
    u = float(np.quantile(normal, tail))
    excess = normal[normal > u] - u
    shape, _, scale = genpareto.fit(excess, floc=0)
    return u + float(genpareto.ppf(1 - rate / (1 - tail), shape, loc=0, scale=scale))


RULES = {
    "p99": lambda v: float(np.percentile(v, 99)),
    "p99.9": lambda v: float(np.percentile(v, 99.9)),
    "max": lambda v: float(np.max(v)),
    "gpd-1e-3": lambda v: gpd_threshold(v, 1e-3),
}


def rates(run: Path, rule: str) -> dict:
    ev = EvalConfig()
    s = load_scored(run, PostprocessConfig(), ev)
    th = {ref: RULES[rule](r.scores) for ref, r in s.references.items()}
    found = {n: events(s.smoothed[n], th[s.manifest[n].reference], min_frames=ev.min_event_frames)
             for n in s.manifest}
    out = alarm_report(s, found, ev)
    return {"threshold": th, **{k: out[k] for k in ("normal_frames_in_events", "anomalous_frames_caught",
                                                     "false_alarm_events")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="scored run folders (labelled test clips)")
    args = ap.parse_args()
    result = {}
    print(f"{'run':<28} {'rule':<9} {'threshold':>10} {'normal in events':>17} {'anomalous caught':>17} {'false':>6}")
    for run in args.runs:
        result[str(run)] = {}
        for rule in RULES:
            r = rates(run, rule)
            result[str(run)][rule] = r
            print(f"{str(run)[-28:]:<28} {rule:<9} {max(r['threshold'].values()):>10.3f} "
                  f"{r['normal_frames_in_events']:>17.1%} {r['anomalous_frames_caught']:>17.1%} "
                  f"{r['false_alarm_events']:>6}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
