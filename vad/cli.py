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


def _config(args: argparse.Namespace):
    from vad.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "teacher_weights", None):
        overrides.append(f"model.teacher_weights={args.teacher_weights}")
    return load_config(args.config, overrides)


def _train(args: argparse.Namespace) -> None:
    from vad.pipeline import train_stage

    train_stage(args.data, args.dataset, args.out, _config(args), device=args.device, scenes=args.scenes)


def _score(args: argparse.Namespace) -> None:
    from vad.config import load_config
    from vad.io import read_dataset
    from vad.pipeline import score_stage

    saved = args.run / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"{saved} not found: is {args.run} a training run? (vad train ... --out RUN)")
    cfg = load_config(saved, list(args.set or []))
    if args.input is not None:
        clips = read_dataset("folder", args.input)
    else:
        if args.data is None or args.dataset is None:
            raise ValueError("score needs --input VIDEO_OR_FOLDER, or --data ROOT with --dataset NAME")
        clips = read_dataset(args.dataset, args.data, "test", scenes=args.scenes)
    score_stage(args.run, clips, cfg.score, device=args.device, overwrite=args.overwrite)


def _evaluate(args: argparse.Namespace) -> None:
    from vad.config import load_config
    from vad.report import evaluate_run

    saved = args.run / "config.yaml"
    cfg = load_config(saved if saved.is_file() else None, list(args.set or []))
    evaluate_run(args.run, cfg.postprocess, cfg.eval)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=5")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")


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

    tr = sub.add_parser(
        "train",
        help="train a model on a dataset's normal training videos",
        description="Train a student-teacher model on the normal training split. Resumes from RUN/checkpoints "
        "when interrupted. Writes RUN/model.pt (or RUN/scenes/<scene>/model.pt with train.per_scene=true) and "
        "RUN/config.yaml.\n\n"
        "examples:\n  python run_pipeline.py train --data /data/shanghaitech --dataset shanghaitech --out runs/sht\n"
        "  python run_pipeline.py train --data /tmp/campus --dataset shanghaitech --out runs/r18 \\\n"
        "      --set model.backbone=resnet18 --teacher-weights ~/weights/resnet18-f37072fd.pth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("--data", type=Path, required=True, help="dataset root")
    tr.add_argument("--dataset", choices=["shanghaitech", "avenue", "ped2", "folder"], required=True)
    tr.add_argument("--out", type=Path, required=True, help="run folder")
    tr.add_argument("--config", help="YAML config (sections model, train, score)")
    tr.add_argument("--scenes", nargs="+", default=None, help="ShanghaiTech scenes to train on, e.g. 1 3")
    tr.add_argument("--teacher-weights", help="teacher state dict file (ResNet teachers without a cached download)")
    _common(tr)
    tr.set_defaults(func=_train)

    sc = sub.add_parser(
        "score",
        help="score frames with a trained run",
        description="Score every frame of a dataset's test split (or of raw videos / frame folders) with the "
        "model(s) of RUN; writes RUN/scores/<clip>.npy (and RUN/maps/<clip>.npy with score.save_maps=true). "
        "Clips already scored are skipped unless --overwrite.\n\n"
        "examples:\n  python run_pipeline.py score --run runs/sht --data /data/shanghaitech --dataset shanghaitech\n"
        "  python run_pipeline.py score --run runs/sht --input /footage/cam3/ --set score.save_maps=true",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sc.add_argument("--run", type=Path, required=True, help="run folder written by 'train'")
    sc.add_argument("--data", type=Path, help="dataset root (scores its test split)")
    sc.add_argument("--dataset", choices=["shanghaitech", "avenue", "ped2", "folder"])
    sc.add_argument("--input", type=Path, help="a video, a folder of frames, or a folder of videos / frame folders")
    sc.add_argument("--scenes", nargs="+", default=None, help="ShanghaiTech scenes to score")
    sc.add_argument("--overwrite", action="store_true", help="re-score clips that already have scores")
    _common(sc)
    sc.set_defaults(func=_score)

    ev = sub.add_parser(
        "evaluate",
        help="post-process scores; write metrics.json, events and plots",
        description="Smooth and normalise the scores of a scored run; with labels, compute frame-level AUC "
        "(micro and macro), AP, EER, per-clip/per-scene/per-event breakdowns and pixel AUROC (when maps were "
        "saved); always write events.csv/events.json (threshold from normal training data) and plots/*.png.\n\n"
        "examples:\n  python run_pipeline.py evaluate --run runs/sht\n"
        "  python run_pipeline.py evaluate --run runs/sht --set postprocess.sigma=7 postprocess.normalisation=none",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--run", type=Path, required=True, help="run folder written by 'score'")
    ev.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="config overrides, e.g. postprocess.sigma=7")
    ev.set_defaults(func=_evaluate)
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
