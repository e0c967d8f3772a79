"""Command-line interface (``vad`` / ``python run_pipeline.py``): argument parsing only, no logic."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vad.errors import VadError


def _inspect(args: argparse.Namespace) -> None:
    from vad.pipeline import inspect_dataset

    inspect_dataset(args.data, args.dataset, splits=args.split, scenes=args.scenes, decode=args.decode)


def _demo(args: argparse.Namespace) -> None:
    from vad.pipeline import run_demo

    run_demo(args.out, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vad",
        description="Video anomaly detection with student-teacher feature pyramids.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="generate the synthetic demo scene and run the pipeline on it",
        description="Generate the seeded synthetic demo scene (ShanghaiTech layout) and run the pipeline on it.\n\n"
        "example:\n  python run_pipeline.py demo --out runs/demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="scene seed (default: 0)")
    demo.set_defaults(func=_demo)

    insp = sub.add_parser(
        "inspect",
        help="check a dataset tree and list its clips",
        description="Read a dataset with its reader, report clips, frame counts and labels; with --decode, "
        "decode every frame to find unreadable files.\n\n"
        "example:\n  python run_pipeline.py inspect --data /data/shanghaitech --dataset shanghaitech --scenes 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    insp.add_argument("--data", type=Path, required=True, help="dataset root (or a video / folder for 'folder')")
    insp.add_argument("--dataset", choices=["shanghaitech", "avenue", "ped2", "folder"], required=True)
    insp.add_argument("--split", nargs="+", choices=["train", "test"], default=["train", "test"])
    insp.add_argument("--scenes", nargs="+", default=None, help="ShanghaiTech scenes to keep, e.g. 1 3")
    insp.add_argument("--decode", action="store_true", help="decode every frame (slow; finds corrupt files)")
    insp.set_defaults(func=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (VadError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
