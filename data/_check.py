"""Shared by the prepare scripts: check a dataset tree with the project's reader."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def check(dataset: str, doc: str) -> None:
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--root", type=Path, required=True, help="dataset root")
    parser.add_argument("--decode", action="store_true", help="decode every frame once to find corrupt files")
    args = parser.parse_args()
    from vad.cli import main

    argv = ["inspect", "--data", str(args.root), "--dataset", dataset] + (["--decode"] if args.decode else [])
    sys.exit(main(argv))
