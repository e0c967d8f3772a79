"""Each part of the fused detector on and off, from a scored run's branch scores (no re-scoring).

    python benchmarks/ablation.py --run RUN [--run RUN2 ...]

A run of a model with the motion branch and the speed cue keeps, per test frame, each part's standardised frame
score (``RUN/branches/<clip>.npy``: appearance, motion, speed; each a z-score on the normal hold-out). A
combination's score is the maximum of its parts' (the model's fusion); "all" is the run's own scores. Prints raw
micro frame AUC (no smoothing, no normalisation), macro AUC and the AUC per clip.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from vad.config import load_config
from vad.metrics import clip_aucs, macro_auc, micro_auc
from vad.offline.evaluate import load_scored


def combinations(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [c for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]


def ablate(run: Path) -> dict:
    cfg = load_config(str(run / "config.yaml"), saved=True)
    s = load_scored(run, cfg.postprocess, cfg.eval, progress=False)
    labels = {n: s.labels[n] for n in s.labels if s.labels[n] is not None}
    rows = {}
    got = {n: s.branch_scores(n) for n in labels}
    names = next(iter(got.values()))[1]
    for fusion in ("sum", "max"):
        for combo in combinations(tuple(names)):
            idx = [names.index(b) for b in combo]
            part = {n: got[n][0][:, idx] for n in labels}
            rows[f"{' + '.join(combo)} ({fusion})" if len(combo) > 1 else combo[0]] = {
                n: v.sum(1) if fusion == "sum" else v.max(1) for n, v in part.items()}
    rows["as scored"] = {n: s.raw[n] for n in labels}
    out = {}
    for name, scores in rows.items():
        out[name] = {"micro": micro_auc(scores, labels), "macro": macro_auc(scores, labels)[0],
                     "per_clip": dict(sorted(clip_aucs(scores, labels).items()))}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, type=Path)
    p.add_argument("--json", type=Path, help="also write the table as JSON")
    args = p.parse_args()
    table = {str(r): ablate(r) for r in args.run}
    for run, rows in table.items():
        clips = list(next(iter(rows.values()))["per_clip"])
        print(f"\n{run}\n| parts | raw micro AUC | macro | " + " | ".join(clips) + " |")
        print("| --- " * (3 + len(clips)) + "|")
        for name, r in rows.items():
            per = " | ".join("-" if r["per_clip"][c] is None else f"{r['per_clip'][c]:.3f}" for c in clips)
            macro = "-" if r["macro"] is None else f"{r['macro']:.4f}"
            print(f"| {name} | {r['micro']:.4f} | {macro} | {per} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
