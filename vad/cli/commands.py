"""What each ``vad`` command does once its arguments are parsed: one call down per command, named as the command
(:mod:`vad.cli.parser` binds them; the settings a command takes are :mod:`vad.policy`'s). The library below is
imported by the command that needs it, so that ``vad --help`` and a command's own errors come before torch loads."""

from __future__ import annotations

import argparse
import logging
import sys

from vad.errors import ConfigError, UsageError
from vad.live.options import flag_fields, from_flags
from vad.policy import run_config

log = logging.getLogger("vad.cli")


def inspect(args: argparse.Namespace) -> None:
    from vad.offline.pipeline import inspect_dataset

    inspect_dataset(args.data, args.dataset, splits=args.split, scenes=args.scenes, decode=args.decode,
                    frame_labels=args.frame_labels)


def demo(args: argparse.Namespace) -> None:
    from vad.offline.pipeline import run_demo

    run_demo(args.out, seed=args.seed, device=args.device, overrides=list(args.set or []))


def pipeline_config(args: argparse.Namespace):
    from vad.config import load_config
    from vad.offline.pipeline import find_pipeline

    overrides = list(args.set or [])
    if getattr(args, "teacher_weights", None):
        overrides.append(f"model.teacher_weights={args.teacher_weights}")
    config = getattr(args, "config", None)
    return load_config(find_pipeline(config) if config else None, overrides)


def train(args: argparse.Namespace) -> None:
    from vad.offline.pipeline import train_stage, with_data

    cfg = with_data(pipeline_config(args), args.data, args.dataset, args.scenes)
    train_stage(cfg, args.out, device=args.device)


def score(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from vad.io import read_dataset
    from vad.offline.pipeline import read_split, score_stage, with_data

    cfg = run_config(args.run, args.set, "score")
    if args.backend is not None:
        cfg = replace(cfg, score=replace(cfg.score, backend=args.backend))
    if args.input is not None:
        if args.data is not None or args.dataset is not None or args.scenes:
            raise UsageError("--input scores raw footage; --data, --dataset and --scenes do not apply to it")
        clips = read_dataset("folder", args.input)
    else:  # the test split of --data/--dataset, or of the labelled dataset the run was trained on
        data = with_data(cfg, args.data, args.dataset, args.scenes).data
        if data.dataset == "folder":
            raise UsageError(f"say what to score: --input VIDEO_OR_FOLDER (this run was trained on the footage in "
                             f"{data.root}; a 'folder' dataset has no test split of its own)")
        print(f"scoring the test split of {data.dataset} at {data.root}")
        clips = read_split(replace(cfg, data=data), "test")
    score_stage(args.run, clips, cfg, device=args.device, overwrite=args.overwrite)


def export(args: argparse.Namespace) -> None:
    from vad.offline.pipeline import export_stage

    cfg = run_config(args.run, args.set, "export")
    copies = [v for v, wanted in (("onnxruntime-int8", args.int8 and "onnx" in args.format),
                                  ("openvino-int8", args.int8 and "openvino" in args.format),
                                  ("openvino-bf16", args.bf16)) if wanted]
    if args.bf16 and "openvino" not in args.format:
        raise UsageError("--bf16 makes a copy for OpenVINO: add --format openvino")
    for folder, checks in export_stage(args.run, cfg, tuple(args.format), copies=tuple(copies)):
        print(f"exported: {folder} (model.onnx{', model.xml/.bin' if 'openvino' in args.format else ''}, "
              "metadata.json, reference.npz)")
        for variant, check in checks.items():
            print(f"  {variant}: {check.line()}")


def watch(args: argparse.Namespace) -> None:
    import signal

    from vad.live.detector import Detector
    from vad.live.sources import check_source
    from vad.live.watch import Watch, WatchOptions

    check_source(args.source)  # the source and the options before the model loads
    flags = {f.name: getattr(args, f.name) for f in flag_fields(WatchOptions)}
    options = WatchOptions(out=args.out, **from_flags(flags))
    cfg = run_config(args.run, args.set, "watch")  # settings it cannot apply are refused by name
    log.info(f"loading the model of {args.run}")
    det = Detector.load(args.run, device=args.device, backend=args.backend, scene=args.scene, cfg=cfg,
                        background=True)  # the source opens at once; a runtime takes over when it is ready
    watch = Watch(det, args.source, options)
    print(watch.banner(), file=sys.stderr)
    for sig in (signal.SIGINT, signal.SIGTERM):  # close the open event, finish its clip, exit 0
        signal.signal(sig, lambda *_: watch.stop())
    try:
        for _ in watch.run():
            pass
    finally:
        det.close()


def serve(args: argparse.Namespace) -> None:
    from vad.site import Site

    site = Site.load(args.config)  # every camera checked before anything opens
    runs = {(c.run, c.scene) for c in site.cfg.cameras.values()}
    if args.add_user or args.add_token:
        _add_login(site.cfg, args)
        return
    if site.cfg.http is not None:  # beyond loopback only with a login: said now, before anything opens
        from vad.site.auth import UsersFile, check_binding

        check_binding(site.cfg.http.host, UsersFile(site.cfg.http.auth_file))
    if args.check:
        print(f"{args.config}: {len(site.cfg.cameras)} camera(s), {len(runs)} model(s), out {site.cfg.out}"
              + (f", mqtt {site.cfg.mqtt.host}:{site.cfg.mqtt.port}" if site.cfg.mqtt else "")
              + (f", http {site.cfg.http.host}:{site.cfg.http.port}" if site.cfg.http else "") + ": ok")
        return
    site.run()


def _add_login(cfg, args: argparse.Namespace) -> None:
    """``--add-user NAME`` (the password asked twice, or one line of standard input with ``--password-stdin``) or
    ``--add-token NAME`` (printed once) into the site's users file."""
    from vad.site.auth import UsersFile

    if cfg.http is None:
        raise UsageError(f"{args.config}: no http: section; logins are for its control room (add http: {{host: "
                         "0.0.0.0, port: 8971}})")
    users = UsersFile(cfg.http.auth_file)
    if args.add_token:
        token = users.add_token(args.add_token)
        log.info(f"token {args.add_token} added to {users.path}; it is shown once, here:")
        print(token)
        return
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        password = getpass.getpass(f"password for {args.add_user}: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ; nothing was changed")
    users.add_user(args.add_user, password)
    log.info(f"user {args.add_user} added to {users.path} (argon2id hash); vad serve reads it without a restart")


def adapt(args: argparse.Namespace) -> None:
    from vad.offline.adapt import adapt

    if args.epochs < 1 or not args.lr > 0:
        raise ConfigError(f"--epochs {args.epochs} --lr {args.lr}: expected at least 1 epoch and a positive rate")
    adapt(args.run, epochs=args.epochs, lr=args.lr, device=args.device)


def evaluate(args: argparse.Namespace) -> None:
    from vad.offline.evaluate import evaluate_run

    cfg = run_config(args.run, args.set, "evaluate", required=False)
    evaluate_run(args.run, cfg.postprocess, cfg.eval)


def render(args: argparse.Namespace) -> None:
    from vad.offline.render import render_run

    cfg = run_config(args.run, args.set, "render", required=False)
    render_run(args.run, cfg.postprocess, cfg.eval, cfg.render, clips=args.clip)


def run(args: argparse.Namespace) -> None:
    from vad.offline.pipeline import run_all, with_data

    cfg = with_data(pipeline_config(args), args.data, args.dataset, args.scenes)
    run_all(cfg, args.out, device=args.device, render_clips=args.clip)


def review(args: argparse.Namespace) -> None:
    from vad.review import serve

    serve(args.run, port=args.port, open_browser=args.open)


def feedback(args: argparse.Namespace) -> None:
    from vad.review.verdicts import record_verdict
    from vad.runs import RunFolder

    line = record_verdict(args.run, args.event, args.verdict, via="cli")
    print(f"{line['event']}: {line['verdict']} -> {RunFolder(args.run).feedback}")
