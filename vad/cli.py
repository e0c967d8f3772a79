"""Command-line interface (``vad`` / ``python run_pipeline.py``): argument parsing, the console's log handler, one
call down per command. Which settings a command takes is :mod:`vad.policy`'s; preparing and opening a model
:mod:`vad.runtime.prepare`'s and :mod:`vad.runtime.open`'s."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vad.errors import ConfigError, UsageError, VadError
from vad.policy import run_config

log = logging.getLogger("vad.cli")


def _inspect(args: argparse.Namespace) -> None:
    from vad.offline.pipeline import inspect_dataset

    inspect_dataset(args.data, args.dataset, splits=args.split, scenes=args.scenes, decode=args.decode,
                    frame_labels=args.frame_labels)


def _demo(args: argparse.Namespace) -> None:
    from vad.offline.pipeline import run_demo

    run_demo(args.out, seed=args.seed, device=args.device, overrides=list(args.set or []))


def _config(args: argparse.Namespace):
    from vad.config import load_config
    from vad.offline.pipeline import find_pipeline

    overrides = list(args.set or [])
    if getattr(args, "teacher_weights", None):
        overrides.append(f"model.teacher_weights={args.teacher_weights}")
    config = getattr(args, "config", None)
    return load_config(find_pipeline(config) if config else None, overrides)


def _train(args: argparse.Namespace) -> None:
    from vad.offline.pipeline import train_stage, with_data

    cfg = with_data(_config(args), args.data, args.dataset, args.scenes)
    train_stage(cfg, args.out, device=args.device)


def _score(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from vad.io import read_dataset
    from vad.offline.pipeline import read_split, score_stage, with_data

    cfg = _with_backend(run_config(args.run, args.set, "score"), args.backend)
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


def _with_backend(cfg, backend: str | None):
    """``cfg`` with ``--backend`` (when given) as its ``score.backend``."""
    from dataclasses import replace

    return cfg if backend is None else replace(cfg, score=replace(cfg.score, backend=backend))


def _export(args: argparse.Namespace) -> None:
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


def _watch(args: argparse.Namespace) -> None:
    import signal

    from vad.live.detector import Detector
    from vad.live.sources import check_source
    from vad.live.watch import Watch, WatchOptions

    check_source(args.source)  # before the model loads
    cfg = run_config(args.run, args.set, "watch")  # settings it cannot apply are refused by name
    log.info(f"loading the model of {args.run}")
    det = Detector.load(args.run, device=args.device, backend=args.backend, scene=args.scene, cfg=cfg,
                        background=True)  # the source opens at once; a runtime takes over when it is ready
    options = WatchOptions(out=args.out, **{f.name: getattr(args, f.name) for f in _option_fields(WatchOptions)})
    watch = Watch(det, args.source, options)
    print(watch.banner(), file=sys.stderr)
    for sig in (signal.SIGINT, signal.SIGTERM):  # close the open event, finish its clip, exit 0
        signal.signal(sig, lambda *_: watch.stop())
    try:
        for _ in watch.run():
            pass
    finally:
        det.close()


def _serve(args: argparse.Namespace) -> None:
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


def _adapt(args: argparse.Namespace) -> None:
    from vad.offline.adapt import adapt

    if args.epochs < 1 or not args.lr > 0:
        raise ConfigError(f"--epochs {args.epochs} --lr {args.lr}: expected at least 1 epoch and a positive rate")
    adapt(args.run, epochs=args.epochs, lr=args.lr, device=args.device)


def _evaluate(args: argparse.Namespace) -> None:
    from vad.offline.evaluate import evaluate_run

    cfg = run_config(args.run, args.set, "evaluate", required=False)
    evaluate_run(args.run, cfg.postprocess, cfg.eval)


def _render(args: argparse.Namespace) -> None:
    from vad.offline.render import render_run

    cfg = run_config(args.run, args.set, "render", required=False)
    render_run(args.run, cfg.postprocess, cfg.eval, cfg.render, clips=args.clip)


def _run(args: argparse.Namespace) -> None:
    from vad.offline.pipeline import run_all, with_data

    cfg = with_data(_config(args), args.data, args.dataset, args.scenes)
    run_all(cfg, args.out, device=args.device, render_clips=args.clip)


def _review(args: argparse.Namespace) -> None:
    from vad.review import serve

    serve(args.run, port=args.port, open_browser=args.open)


def _feedback(args: argparse.Namespace) -> None:
    from vad.review.verdicts import record_verdict
    from vad.runs import RunFolder

    line = record_verdict(args.run, args.event, args.verdict, via="cli")
    print(f"{line['event']}: {line['verdict']} -> {RunFolder(args.run).feedback}")


def _data_args(p: argparse.ArgumentParser, what: str) -> None:
    from vad.io import DATASETS

    p.add_argument("--data", type=Path, help=f"dataset root ({what})")
    p.add_argument("--dataset", choices=DATASETS, help="dataset kind (default: data.dataset in the config)")
    p.add_argument("--scenes", nargs="+", default=None, help="ShanghaiTech scenes to use, e.g. 1 3")


def _common(p: argparse.ArgumentParser, device: bool) -> None:
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.epochs=5 (may be repeated)")
    if device:
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")


def _command(sub, name: str, func, help: str, text: str, examples: list[str], writes: str | None = None,
             common: bool = True, device: bool = True) -> argparse.ArgumentParser:
    """A subcommand with its description, examples, ``--set`` (``common``) and ``--device`` (``device``: commands
    that run a model); ``writes`` names the argument holding the run folder it writes (locked while it runs)."""
    p = sub.add_parser(name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=f"{text}\n\nexample{'s' if len(examples) > 1 else ''}:\n  " + "\n  ".join(
                           e if e.startswith("torchrun") else f"python run_pipeline.py {name} {e}".rstrip()
                           for e in examples))
    p.set_defaults(func=func, writes=writes)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of any error (report bugs with it)")
    p.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS,
                   help="say only notes, warnings and errors")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="say more (debug records, by module)")
    if common:
        _common(p, device)
    return p


def _backend_arg(p: argparse.ArgumentParser) -> None:
    from vad.runtime.export import BACKENDS

    p.add_argument("--backend", choices=BACKENDS,
                   help="what runs the model: torch, or a copy exported for ONNX Runtime / OpenVINO (made on first "
                        "use, kept in RUN/export/), or its int8 / bf16 copy (made with normal footage and checked: "
                        "vad export --int8); default: score.backend (auto: the fastest installed on a CPU, of the "
                        "copies only those that passed their check)")


def _run_arg(p: argparse.ArgumentParser, written_by: str) -> None:
    p.add_argument("--run", type=Path, required=True, help=f"run folder written by '{written_by}'")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{version('vad-pyramid')} (vad-pyramid)"
    except PackageNotFoundError:  # run from a checkout without installing
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vad", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Video anomaly detection with student-teacher feature pyramids.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error (report bugs with it)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="count", default=0, help="say only notes, warnings and errors")
    talk.add_argument("-v", "--verbose", action="count", default=0, help="say more (debug records, by module)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_start_commands(sub)
    _add_model_commands(sub)
    _add_stage_commands(sub)
    return parser


def _add_start_commands(sub) -> None:
    """``demo`` and ``inspect``."""
    from vad.io import DATASETS

    p = _command(sub, "demo", _demo, "generate the synthetic demo scene and run every stage on it",
                 "Generate the seeded synthetic demo scene (ShanghaiTech layout, under OUT/data) and run "
                 "pipelines/demo.yaml on it: train, score, evaluate, render. Needs no network and no GPU (a few "
                 "minutes on 2 CPU cores). Results: OUT/metrics.json, OUT/events.csv, OUT/plots/, "
                 "OUT/videos/<clip>.mp4.", ["", "--out runs/demo2 --set render.layout=side_by_side"], writes="out")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default: 0)")

    p = _command(sub, "inspect", _inspect, "check a dataset tree and list its clips",
                 "Read a dataset with its reader, say which layout it found (the original archive, or the research "
                 "layout: training/frames, testing/frames and one label file such as ped2.mat; docs/data.md), report "
                 "clips, frame counts and labels against the published counts; with --decode, decode every frame "
                 "to find unreadable files.",
                 ["--data /data/shanghaitech --dataset shanghaitech --scenes 1"], common=False)
    p.add_argument("--data", type=Path, required=True, help="dataset root (or a video / folder for 'folder')")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--split", nargs="+", choices=["train", "test"], default=["train", "test"])
    p.add_argument("--scenes", nargs="+", default=None, help="ShanghaiTech scenes to keep, e.g. 1 3")
    p.add_argument("--decode", action="store_true", help="decode every frame (slow; finds corrupt files)")
    p.add_argument("--frame-labels", choices=["masks", "published"],
                   help="Avenue: frame labels from the masks (default) or avenue.mat's intervals (data/avenue)")


def _add_model_commands(sub) -> None:
    """``train`` and ``score``."""
    p = _command(sub, "train", _train, "train a model on a dataset's normal training videos",
                 "Train a student-teacher model on the normal training split. Resumes from RUN/checkpoints when "
                 "interrupted. Writes RUN/model.pt (or RUN/scenes/<scene>/model.pt with train.per_scene=true) and "
                 "RUN/config.yaml.",
                 ["--data /data/shanghaitech --dataset shanghaitech --out runs/sht",
                  "--data /tmp/campus --dataset shanghaitech --out runs/r18 \\\n"
                  "      --set model.backbone=resnet18 --teacher-weights ~/weights/resnet18-f37072fd.pth"],
                 writes="out")
    _data_args(p, "or data.root in the config")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--config", help="pipeline YAML, or the name of one in pipelines/ (e.g. campus)")
    p.add_argument("--teacher-weights", help="teacher state dict file (ResNet teachers without a cached download)")

    p = _command(sub, "score", _score, "score frames with a trained run",
                 "Score every frame of raw videos / frame folders (--input) or of a dataset's test split with the "
                 "model(s) of RUN; writes RUN/scores/<clip>.npy and RUN/maps/<clip>.npy. Without --input/--data it "
                 "scores the test split of the labelled dataset RUN was trained on. Clips already scored by the "
                 "current model and settings from the same source are skipped unless --overwrite.",
                 ["--run runs/sht --input /footage/cam3/", "--run runs/sht",
                  "--run runs/sht --data /data/shanghaitech --dataset shanghaitech",
                  "torchrun --nproc_per_node=8 run_pipeline.py score --run-dir runs/sht --input /archive/  # 8 GPUs"],
                 writes="run")
    p.add_argument("--run", "--run-dir", dest="run", type=Path, required=True,
                   help="run folder written by 'train' (under torchrun spell it --run-dir: torchrun reads --run "
                   "as an abbreviation of its own --run-path)")
    _data_args(p, "scores its test split")
    p.add_argument("--input", type=Path, help="a video, a folder of frames, or a folder of videos / frame folders")
    p.add_argument("--overwrite", action="store_true", help="re-score clips that already have scores")
    _backend_arg(p)


def _add_stage_commands(sub) -> None:
    """``evaluate``, ``render`` and ``run``."""
    p = _command(sub, "evaluate", _evaluate, "post-process scores; write metrics.json, events and plots",
                 "Smooth and normalise the scores of a scored run; with labels, compute frame-level AUC (micro and "
                 "macro), AP, EER, per-clip/per-scene/per-event breakdowns and pixel AUROC (when maps were saved); "
                 "always write events.csv/events.json (threshold from normal training data) and plots/*.png.",
                 ["--run runs/sht", "--run runs/sht --set postprocess.sigma=7 postprocess.normalisation=none"],
                 writes="run", device=False)
    _run_arg(p, "score")

    p = _command(sub, "render", _render, "write annotated MP4s of scored clips",
                 "Write RUN/videos/<clip>.mp4 (H.264, the source frame rate) for each scored clip: the anomaly "
                 "heatmap over the frame (needs the saved maps), a score strip with the threshold line and the "
                 "ground-truth spans, and a red border with an ANOMALY tag during detected events (as in "
                 "events.csv). Frame-folder clips use render.fps, else eval.fps, else 25.",
                 ["--run runs/sht --clip 01_0014 01_0015",
                  "--run runs/sht --set render.layout=side_by_side render.opacity=0.6"], writes="run", device=False)
    _run_arg(p, "score")
    p.add_argument("--clip", nargs="+", help="clip names to render (default: every scored clip)")

    p = _command(sub, "export", _export, "export a trained model for ONNX Runtime / OpenVINO",
                 "Write the model of RUN as an ONNX graph (and, with --format openvino, OpenVINO IR) with what scoring "
                 "needs beside it: metadata.json (input size, normalisation, motion context, scoring settings) and "
                 "reference.npz (the normal reference: hold-out scores, threshold, position statistics), into "
                 "RUN/export/<reference>/. `score --backend onnxruntime|openvino` uses it. Needs the deploy extra: "
                 'pip install -e ".[deploy]".',
                 ["--run runs/campus --format onnx openvino", "--run runs/campus --set model.fusion=sum"],
                 writes="run", device=False)
    _run_arg(p, "train")
    p.add_argument("--format", nargs="+", choices=["onnx", "openvino"], default=["onnx"],
                   help="what to write (default: onnx; openvino adds IR beside the ONNX graph)")
    p.add_argument("--int8", action="store_true",
                   help="also an int8 copy for each format (onnx: ONNX Runtime QDQ; openvino: NNCF), calibrated on "
                        "frames of the model's training footage and checked on its normal hold-out; a copy that "
                        "fails the check is kept with its reasons and never used")
    p.add_argument("--bf16", action="store_true",
                   help="also a bf16 copy for OpenVINO (with --format openvino; CPUs with AVX512-BF16 or AMX), "
                        "checked the same way")

    _add_watch_command(sub)
    _add_serve_command(sub)
    _add_review_commands(sub)

    p = _command(sub, "run", _run, "every stage from a pipeline YAML: train, score, evaluate, render",
                 "Run a pipeline config end to end on a dataset: train on its training split, score its test split "
                 "(with maps), evaluate, render. The resolved config is saved as RUN/config.yaml. Re-running on the "
                 "same RUN resumes. Pipelines: pipelines/{demo,campus,shanghaitech,avenue,ped1,ped2}.yaml.",
                 ["--config pipelines/campus.yaml --data /tmp/campus --out runs/campus",
                  "--config ped2 --data /data/ped2 --out runs/ped2 --set train.epochs=50"], writes="out")
    p.add_argument("--config", required=True, help="pipeline YAML, or the name of one in pipelines/")
    _data_args(p, "or data.root in the config")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--clip", nargs="+", help="render only these clips (default: all)")


def _option_fields(options: type) -> list:
    """The fields of options dataclass ``options`` that are command-line flags (``metadata["cli"]``, default
    true; ``out`` and other fields given as their own arguments say false)."""
    from dataclasses import fields

    return [f for f in fields(options) if f.metadata.get("cli", True)]


def _option_args(p: argparse.ArgumentParser, options: type) -> None:
    """A flag per field of options dataclass ``options`` (:func:`_option_fields`): ``--field-name`` (or
    ``metadata["flag"]``), its type and default from the field, its help from ``metadata["help"]``; a bool that
    defaults to false is a switch."""
    import dataclasses

    for f in _option_fields(options):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        kind = str(f.type).replace(" | None", "").replace("Optional[", "").rstrip("]")
        default = f.default if f.default is not dataclasses.MISSING else None
        if kind == "bool":  # a switch: --name turns on what is off by default, --no-name turns off what is on
            flag = flag if not default else f.metadata.get("flag", "--no-" + f.name.replace("_", "-"))
            p.add_argument(flag, dest=f.name, action="store_false" if default else "store_true", default=default,
                           help=f.metadata.get("help"))
            continue
        p.add_argument(flag, dest=f.name, type={"int": int, "float": float, "str": str}[kind], default=default,
                       choices=f.metadata.get("choices"), help=f.metadata.get("help"))


def _add_watch_command(sub) -> None:
    from vad.live.watch import WatchOptions

    p = _command(sub, "watch", _watch, "score a live stream as it arrives; events as they happen",
                 "Score a camera stream (rtsp://, http(s)://, udp://, srt://), a webcam (/dev/videoN, webcam:N), or a "
                 "file or frame folder replayed, with the model of RUN, frame by frame as it arrives. Frames are "
                 "sampled to the rate the model was trained at; when scoring falls behind, the stalest frames are "
                 "dropped (counted). Events follow the live rule (postprocess.causal_window, eval.min_event_frames, "
                 "eval.close_frames, at calibrated 1.0) and go to OUT/events.jsonl as they change (start, update, end; "
                 "gap for an outage; status every few seconds), with a snapshot (OUT/snapshots/) and an annotated "
                 "clip with pre- and post-roll (OUT/clips/). A lost source is reopened with backoff. Ctrl-C or SIGTERM "
                 "close an open event, finish its clip and exit 0.",
                 ["--run runs/campus --source rtsp://camera.local:554/stream1 --out watch/cam1",
                  "--run runs/campus --source cam1/day.mp4 --realtime --out watch/replay --stdout",
                  "--run runs/campus --source udp://127.0.0.1:5000 --out watch/udp --webhook http://localhost:8080/vad"],
                 writes="out")
    _run_arg(p, "train")
    p.add_argument("--source", required=True, help="stream URL, webcam (/dev/video0, webcam:0), video file or frame "
                                                   "folder")
    p.add_argument("--out", type=Path, required=True, help="output folder: events.jsonl, snapshots/, clips/")
    _option_args(p, WatchOptions)
    p.add_argument("--scene", help="the scene's model, for a run trained per scene")
    _backend_arg(p)


SITE_EXAMPLE = """\
site.yaml:
  cameras:
    gate:  {source: rtsp://10.0.0.5/stream1, run: runs/gate}
    lawn:  {source: udp://127.0.0.1:5002, run: runs/campus, fps: 10}
    hall:  {source: /dev/video0, run: runs/campus, pre_roll: 5}
  defaults: {post_roll: 5}     # any camera key, for every camera that does not set it
  out: site/                   # site/<camera>/events.jsonl, snapshots/, clips/
  mqtt: {host: 127.0.0.1, port: 1883, topic_prefix: vad}   # optional
  http: {host: 127.0.0.1, port: 8971}                      # optional: the control room at /, API, /metrics
  max_gb: 20                   # evidence kept, all cameras (retain_days: per camera, default 7)
  batch: 8                     # frames scored together, across the cameras of one model
  batch_timeout_ms: 20"""


def _add_serve_command(sub) -> None:
    p = _command(sub, "serve", _serve, "watch every camera of a site in one process (MQTT, health, metrics)",
                 "Watch every camera of a site file in one process: cameras that name the same run share one loaded "
                 "model, and their frames are scored together in batches (each with its own camera's past: the "
                 "scores vad watch gives it alone). Each camera writes as vad watch does (OUT/<camera>/events.jsonl, "
                 "snapshots/, clips/); with mqtt: every event line on <prefix>/events, <prefix>/<camera>/anomaly "
                 "ON/OFF (retained), <prefix>/<camera>/score once a second, <prefix>/stats, <prefix>/available "
                 "(online/offline, the last will); with http: /healthz, /api/cameras, /api/events and /metrics "
                 "(Prometheus). Sources open within seconds: a runtime (export, measurement) is prepared in the "
                 "background while torch scores. SIGHUP re-reads the file (cameras added, removed or changed; the "
                 "others untouched); SIGTERM or Ctrl-C close open events, finish clips and publish offline.\n\n"
                 + SITE_EXAMPLE,
                 ["--config site.yaml", "--config site.yaml --check", "--config site.yaml --add-user alice"],
                 common=False)
    p.add_argument("--config", required=True, help="the site file (YAML: cameras, out, mqtt, http, ...)")
    p.add_argument("--check", action="store_true", help="check the file (runs, sources, keys) and exit")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--add-user", metavar="NAME", help="add (or change) a control-room user: the password is asked "
                     "for twice, and stored as an argon2id hash in the users file (http.auth_file), then exit")
    who.add_argument("--add-token", metavar="NAME", help="add a bearer token for scripts and Prometheus "
                     "(Authorization: Bearer TOKEN), printed once, then exit")
    p.add_argument("--password-stdin", action="store_true", help="with --add-user: read the password from one line of "
                   "standard input")


def _add_review_commands(sub) -> None:
    """``review`` and ``feedback``. Neither takes the run's lock: ``review`` serves for hours (evaluate and render
    must still run), and a verdict is one line appended under the feedback file's own lock, which nothing else in
    the run writes."""
    p = _command(sub, "review", _review, "serve a run's review page; mark its events normal or anomalous",
                 "Serve RUN/review.html (written by evaluate) on 127.0.0.1 only, with the run's videos and the sources "
                 "of its clips. The page shows the run's summary, a timeline per clip and the events as cards; a "
                 "click plays the event (2 s before it). Verdicts (keys n / a, or a card's buttons) go to "
                 "RUN/feedback.jsonl, one line each. Opened as a file, the page is read-only. Ctrl-C stops.",
                 ["--run runs/campus --open", "--run runs/campus --port 8800"], common=False)
    _run_arg(p, "evaluate")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")

    p = _command(sub, "feedback", _feedback, "record a verdict on an event from a script",
                 "Append an operator's verdict on one event (its id as in events.csv) to RUN/feedback.jsonl, as "
                 "the review page does: one JSON line with the event, its clip and frames, the verdict, the time "
                 "(UTC) and via=cli. The last verdict on an event wins.",
                 ["--run runs/campus --event 01_0014-f212 --verdict normal",
                  "--run runs/campus --event cam3-f1520 --verdict anomaly"], common=False)
    _run_arg(p, "evaluate")
    p.add_argument("--event", required=True, help="event id (the id column of events.csv)")
    p.add_argument("--verdict", required=True, choices=["normal", "anomaly"], help="what the event was")

    p = _command(sub, "adapt", _adapt, "fine-tune a run's model with the events marked normal",
                 "Fine-tune the run's students, starting from its model, with the frames of the events marked normal "
                 "(RUN/feedback.jsonl) added to its normal training footage (events marked anomaly never train); the "
                 "hold-out statistics and the threshold are fitted again on normal data only. The new model becomes "
                 "RUN/model.pt; the previous one is kept in RUN/models/. The next vad score scores the run's clips "
                 "again. Minutes, not a retraining: a few epochs at a low learning rate.",
                 ["--run runs/campus", "--run runs/campus --epochs 6 --lr 1e-4"], writes="run", common=False)
    _run_arg(p, "evaluate")
    p.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs (default 4)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the one-cycle schedule (default 3e-4)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")


@contextmanager
def _writing(args: argparse.Namespace) -> Iterator[None]:
    """Hold the lock of the run folder the command writes (``--out`` or ``--run``: :func:`vad.runs.writing`). Under
    torchrun rank 0 holds it for all ranks."""
    from vad.distributed import world
    from vad.runs import writing

    folder = getattr(args, args.writes) if getattr(args, "writes", None) else None
    if folder is None or not world().main:
        yield
        return
    if args.writes == "out" and getattr(args, "run", None) is None:  # a new run's settings, before its folder
        _config(args)
    with writing(folder, args.command, existing=args.writes == "run"):
        yield


class ConsoleHandler(logging.Handler):
    """vad's log records as the CLI shows them: the message alone, information on standard output, notes and
    warnings on standard error (the streams looked up at each record, so a redirected stream is honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()  # line by line, also off a terminal (a service's log, a pipe)
        except Exception:
            self.handleError(record)


def console_logging(verbosity: int = 0) -> None:
    """Show vad's log on the console: ``verbosity`` -1 (``-q``) warnings only, 0 what a user is told, 1 (``-v``) with
    debug records named by their module. Idempotent: one console handler whatever the calls."""
    logger = logging.getLogger("vad")
    handler = next((h for h in logger.handlers if isinstance(h, ConsoleHandler)), None)
    if handler is None:
        handler = ConsoleHandler()
        logger.addHandler(handler)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s" if verbosity > 0 else "%(message)s"))
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    logger.propagate = False


DISTRIBUTED = ("train", "score", "run")  # the commands that use every process of a torchrun launch


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input (vad's own errors, files that cannot be read or written) ends with one
    ``error:`` line and exit code 2. Anything else is a bug and keeps its traceback (``--debug``: every error)."""
    from vad import distributed

    args = build_parser().parse_args(argv)
    console_logging(max(-1, min(1, args.verbose - args.quiet)))
    try:
        if distributed.launched():
            if args.command not in DISTRIBUTED:
                raise UsageError(f"'{args.command}' runs in one process; under torchrun use one of {DISTRIBUTED}")
            _, args.device = distributed.setup(args.device)
        with _writing(args):
            args.func(args)
    except VadError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unwritable or unreadable file or folder: name it
        if args.debug:
            raise
        name = err.filename2 or err.filename  # a rename names its target second
        where = f"{name}: " if name and str(name) not in str(err.strerror or err) else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()
    return 0
