#!/usr/bin/env python3
"""Build the campus benchmark from ../shared/bench (beside the project checkout) into --out."""

import argparse
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "shared" / "bench"

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "dataset")
    p.add_argument("--bench", type=Path, default=BENCH, help=f"folder with make_campus_bench.py (default {BENCH})")
    a = p.parse_args()
    script = a.bench / "make_campus_bench.py"
    if not script.is_file():
        sys.exit(f"error: {script} not found; pass --bench DIR with make_campus_bench.py and vtest.avi")
    subprocess.run([sys.executable, str(script), "--out", str(a.out)], check=True)
    from vad.cli import main

    sys.exit(main(["inspect", "--data", str(a.out), "--dataset", "shanghaitech"]))
