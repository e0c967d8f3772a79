"""The ``vad`` command line: its commands, their arguments, help and examples. Each command's arguments end in a call
of its function in :mod:`vad.cli.commands`; ``vad watch``'s camera flags are built from
:class:`vad.live.options.CameraOptions`, the schema of a site file's cameras too."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Literal

import yaml

from vad.cli.commands import (
    adapt,
    demo,
    evaluate,
    export,
    feedback,
    inspect,
    render,
    review,
    run,
    score,
    serve,
    train,
    watch,
)
from vad.config import BACKENDS, choices
from vad.live.options import CameraOptions, flag, flag_fields


def _data_args(p: argparse.ArgumentParser, what: str) -> None:
    from vad.io import DATASETS

    p.add_argument("--data", type=Path, help=f"dataset root ({what})")
    p.add_argument("--dataset", choices=DATASETS, help="dataset kind (default: data.dataset in the config)")
    p.add_argument("--scenes", nargs="+", default=None, help="ShanghaiTech scenes to use, e.g. 1 3")


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
        p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                       help="config overrides, e.g. train.epochs=5 (may be repeated)")
    if common and device:
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    return p


def _backend_arg(p: argparse.ArgumentParser) -> None:
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
    from vad.io import DATASETS

    p = _command(sub, "demo", demo, "generate the synthetic demo scene and run every stage on it",
                 "Generate the seeded synthetic demo scene (ShanghaiTech layout, under OUT/data) and run "
                 "pipelines/demo.yaml on it: train, score, evaluate, render. Needs no network and no GPU (a few "
                 "minutes on 2 CPU cores). Results: OUT/metrics.json, OUT/events.csv, OUT/plots/, "
                 "OUT/videos/<clip>.mp4.", ["", "--out runs/demo2 --set render.layout=side_by_side"], writes="out")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default: 0)")

    p = _command(sub, "inspect", inspect, "check a dataset tree and list its clips",
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
    p = _command(sub, "train", train, "train a model on a dataset's normal training videos",
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

    p = _command(sub, "score", score, "score frames with a trained run",
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
    p = _command(sub, "evaluate", evaluate, "post-process scores; write metrics.json, events and plots",
                 "Smooth and normalise the scores of a scored run; with labels, compute frame-level AUC (micro and "
                 "macro), AP, EER, per-clip/per-scene/per-event breakdowns and pixel AUROC (when maps were saved); "
                 "always write events.csv/events.json (threshold from normal training data) and plots/*.png.",
                 ["--run runs/sht", "--run runs/sht --set postprocess.sigma=7 postprocess.normalisation=none"],
                 writes="run", device=False)
    _run_arg(p, "score")

    p = _command(sub, "render", render, "write annotated MP4s of scored clips",
                 "Write RUN/videos/<clip>.mp4 (H.264, the source frame rate) for each scored clip: the anomaly "
                 "heatmap over the frame (needs the saved maps), a score strip with the threshold line and the "
                 "ground-truth spans, and a red border with an ANOMALY tag during detected events (as in "
                 "events.csv). Frame-folder clips use render.fps, else eval.fps, else 25.",
                 ["--run runs/sht --clip 01_0014 01_0015",
                  "--run runs/sht --set render.layout=side_by_side render.opacity=0.6"], writes="run", device=False)
    _run_arg(p, "score")
    p.add_argument("--clip", nargs="+", help="clip names to render (default: every scored clip)")

    p = _command(sub, "export", export, "export a trained model for ONNX Runtime / OpenVINO",
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

    p = _command(sub, "run", run, "every stage from a pipeline YAML: train, score, evaluate, render",
                 "Run a pipeline config end to end on a dataset: train on its training split, score its test split "
                 "(with maps), evaluate, render. The resolved config is saved as RUN/config.yaml. Re-running on the "
                 "same RUN resumes. Pipelines: pipelines/{demo,campus,shanghaitech,avenue,ped1,ped2}.yaml.",
                 ["--config pipelines/campus.yaml --data /tmp/campus --out runs/campus",
                  "--config ped2 --data /data/ped2 --out runs/ped2 --set train.epochs=50"], writes="out")
    p.add_argument("--config", required=True, help="pipeline YAML, or the name of one in pipelines/")
    _data_args(p, "or data.root in the config")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--clip", nargs="+", help="render only these clips (default: all)")


def _scalar(text: str) -> object:
    """A camera option's flag value read as the site file's key would be (YAML: ``10`` a number, ``udp`` text), so
    that :class:`~vad.live.options.CameraOptions` checks it as one and a bad value gets the same error from both."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:  # not YAML: the text itself, refused by the check
        return text


def _option_args(p: argparse.ArgumentParser, options: type) -> None:
    """A flag per field of options dataclass ``options`` (:func:`~vad.live.options.flag_fields`), its help
    ``metadata["help"]``; a bool is a switch. A camera option's value is checked when the options are made
    (:func:`~vad.live.options.from_flags`); the watch loop's own options take their type here."""
    hints = typing.get_type_hints(CameraOptions, include_extras=True)
    for f in flag_fields(options):
        default = None if f.default is dataclasses.MISSING else f.default
        text = f.metadata.get("help")
        if f.type == "bool":  # a switch: --name turns on what is off by default, --no-name turns off what is on
            p.add_argument(flag(f), dest=f.name, action="store_false" if default else "store_true", default=default,
                           help=f"no {text}" if default else text)
        elif f.name in hints:
            literal = typing.get_origin(hints[f.name]) is Literal
            p.add_argument(flag(f), dest=f.name, type=_scalar, default=default, help=text,
                           metavar="{" + ",".join(choices(hints[f.name])) + "}" if literal else None)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type).replace(" | None", "")]
            p.add_argument(flag(f), dest=f.name, type=kind, default=default, help=text)


def _add_watch_command(sub) -> None:
    from vad.live.watch import WatchOptions

    p = _command(sub, "watch", watch, "score a live stream as it arrives; events as they happen",
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
    p = _command(sub, "serve", serve, "watch every camera of a site in one process (MQTT, health, metrics)",
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
    p = _command(sub, "review", review, "serve a run's review page; mark its events normal or anomalous",
                 "Serve RUN/review.html (written by evaluate) on 127.0.0.1 only, with the run's videos and the sources "
                 "of its clips. The page shows the run's summary, a timeline per clip and the events as cards; a "
                 "click plays the event (2 s before it). Verdicts (keys n / a, or a card's buttons) go to "
                 "RUN/feedback.jsonl, one line each. Opened as a file, the page is read-only. Ctrl-C stops.",
                 ["--run runs/campus --open", "--run runs/campus --port 8800"], common=False)
    _run_arg(p, "evaluate")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")

    p = _command(sub, "feedback", feedback, "record a verdict on an event from a script",
                 "Append an operator's verdict on one event (its id as in events.csv) to RUN/feedback.jsonl, as "
                 "the review page does: one JSON line with the event, its clip and frames, the verdict, the time "
                 "(UTC) and via=cli. The last verdict on an event wins.",
                 ["--run runs/campus --event 01_0014-f212 --verdict normal",
                  "--run runs/campus --event cam3-f1520 --verdict anomaly"], common=False)
    _run_arg(p, "evaluate")
    p.add_argument("--event", required=True, help="event id (the id column of events.csv)")
    p.add_argument("--verdict", required=True, choices=["normal", "anomaly"], help="what the event was")

    p = _command(sub, "adapt", adapt, "fine-tune a run's model with the events marked normal",
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
