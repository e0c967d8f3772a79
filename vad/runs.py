"""The run folder: every path in it, the manifest of scored clips and their names, and the lock that lets one
command at a time write it. No other module builds a path inside a run folder.

Layout (``RUN``)::

    RUN/config.yaml                 the resolved config (train writes it; later stages read it)
    RUN/model.pt                    the trained model (RUN/scenes/<scene>/model.pt with train.per_scene)
    RUN/models/<time>.pt            models replaced by `vad adapt` (the run's model.pt is the current one)
    RUN/checkpoints/last.pt, best.pt, RUN/train_log.jsonl
    RUN/clips.json                  the manifest: one ClipRecord per scored clip (clips.rank<R>.json per rank
                                    while a torchrun scoring is under way)
    RUN/scores/<clip>.npy           (T,) float32 per-frame scores
    RUN/maps/<clip>.npy             (T, h, w) float16 anomaly maps (score.save_maps)
    RUN/branches/<clip>.npy         (T, k) float32 standardised frame score per branch of a fused model
    RUN/labels/<clip>.npy           (T,) uint8 frame labels of labelled clips
    RUN/normal_scores/<ref>.npz     the normal reference that clips were scored against (vad.runtime.reference)
    RUN/export/<ref>/               the model exported for ONNX Runtime / OpenVINO under that reference's settings
    RUN/metrics.json, events.csv, events.json, plots/roc.png, plots/timeline_<clip>.png  (evaluate)
    RUN/review.html, RUN/review/<event>.jpg   the review page and its event thumbnails (evaluate; vad review serves it)
    RUN/videos/<clip>.mp4           (render)
    RUN/feedback.jsonl              an operator's verdicts on events (vad review, vad feedback)
    RUN/adapt/<time>/               a fine-tuning with those verdicts (vad adapt: a training folder)
    RUN/.lock                       held by the command writing the folder

Outputs derived from a clip's scores (its video and timeline, and the run's metrics, events, ROC and review page)
are deleted when the clip is scored again (:meth:`RunFolder.invalidate`): nothing shown is older than its scores.

A watch folder (``vad watch --out DIR``; :class:`WatchFolder`)::

    DIR/events.jsonl                one line per event change, gap and status, as they happen
    DIR/snapshots/<event>.jpg       the peak frame of each event with its heatmap
    DIR/clips/<event>.mp4           each event with pre- and post-roll, annotated
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vad.atomic import TEMP_PREFIX, save_npy, write_text
from vad.errors import VadError
from vad.io.records import Clip, renamed


class RunFolderError(VadError, ValueError):
    """A run folder that is in use, unwritable, or not a run folder."""


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (nothing is created by asking)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # train
    config = property(lambda self: self.root / "config.yaml")
    model = property(lambda self: self.root / "model.pt")
    models = property(lambda self: self.root / "models")  # earlier models, kept when `adapt` replaces model.pt
    checkpoints = property(lambda self: self.root / "checkpoints")
    last_checkpoint = property(lambda self: self.root / "checkpoints" / "last.pt")
    best_checkpoint = property(lambda self: self.root / "checkpoints" / "best.pt")
    train_log = property(lambda self: self.root / "train_log.jsonl")
    scenes = property(lambda self: self.root / "scenes")
    adaptations = property(lambda self: self.root / "adapt")  # vad adapt's training folders, one per run of it
    # score
    manifest = property(lambda self: self.root / "clips.json")
    scores_dir = property(lambda self: self.root / "scores")
    # evaluate, render, review
    metrics = property(lambda self: self.root / "metrics.json")
    events_csv = property(lambda self: self.root / "events.csv")
    events_json = property(lambda self: self.root / "events.json")
    plots = property(lambda self: self.root / "plots")
    roc_plot = property(lambda self: self.root / "plots" / "roc.png")
    videos = property(lambda self: self.root / "videos")
    maps_dir = property(lambda self: self.root / "maps")
    review_page = property(lambda self: self.root / "review.html")
    thumbnails = property(lambda self: self.root / "review")  # the review page's event thumbnails
    feedback = property(lambda self: self.root / "feedback.jsonl")
    footage = property(lambda self: self.root / "footage")  # live events' frames given a verdict (vad serve's page)
    lock = property(lambda self: self.root / ".lock")

    def scene(self, scene: str) -> RunFolder:
        """The training folder of one scene's model (``train.per_scene``)."""
        return RunFolder(self.scenes / scene)

    def scores(self, clip: str) -> Path:
        return self.root / "scores" / f"{clip}.npy"

    def maps(self, clip: str) -> Path:
        return self.root / "maps" / f"{clip}.npy"

    def labels(self, clip: str) -> Path:
        return self.root / "labels" / f"{clip}.npy"

    def branches(self, clip: str) -> Path:
        """``(T, k)`` float32: a fused model's standardised frame score per branch (which branch raised an event)."""
        return self.root / "branches" / f"{clip}.npy"

    def normal_scores(self, reference: str) -> Path:
        """The normal reference ``reference`` (a :class:`vad.runtime.reference.NormalReference`); run folders of earlier
        versions hold the hold-out scores alone, as ``<reference>.npy``."""
        new = self.root / "normal_scores" / f"{reference}.npz"
        old = new.with_suffix(".npy")
        return old if not new.is_file() and old.is_file() else new

    def video(self, clip: str) -> Path:
        return self.videos / f"{clip}.mp4"

    def export(self, reference: str) -> Path:
        """The folder of an exported copy of the model under one scoring setting (:mod:`vad.runtime.export`)."""
        return self.root / "export" / reference

    def timeline(self, clip: str) -> Path:
        return self.plots / f"timeline_{clip}.png"

    def thumbnail(self, event: str) -> Path:
        return self.thumbnails / f"{event}.jpg"

    def rank_part(self, rank: int) -> Path:
        return self.root / f"clips.rank{rank}.json"

    def rank_parts(self) -> list[Path]:
        return sorted(self.root.glob("clips.rank*.json"))

    def model_files(self) -> dict[str, Path]:
        """``{reference: model file}``: ``{"all": model.pt}``, or one per scene folder with ``train.per_scene``."""
        if self.model.is_file():
            return {"all": self.model}
        if self.scenes.is_dir():
            return {d.name: d / "model.pt" for d in sorted(self.scenes.iterdir()) if (d / "model.pt").is_file()}
        return {}

    def is_run(self) -> bool:
        """Whether the folder holds what a vad command wrote (a config, a model or a manifest)."""
        return any(p.exists() for p in (self.config, self.model, self.manifest, self.scenes, self.checkpoints))

    def run_outputs(self) -> list[Path]:
        """The outputs that combine every scored clip (evaluate's and the review page)."""
        return [self.metrics, self.events_csv, self.events_json, self.roc_plot, self.review_page]

    def derived(self, clip: str) -> list[Path]:
        """The outputs made from clip ``clip``'s scores alone."""
        return [self.video(clip), self.timeline(clip)]

    def invalidate(self, clips: Sequence[str]) -> list[Path]:
        """Delete what was derived from the scores of ``clips`` (about to change, or changed): their videos and
        timelines, and the run-wide outputs. Returns the paths deleted."""
        gone = []
        for path in [*self.run_outputs(), *(p for c in clips for p in self.derived(c))]:
            if path.is_file():
                path.unlink()
                gone.append(path)
        return gone


@dataclass(frozen=True)
class WatchFolder:
    """The paths of a live watch's output folder (``vad watch --out DIR``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    events = property(lambda self: self.root / "events.jsonl")
    snapshots = property(lambda self: self.root / "snapshots")
    clips = property(lambda self: self.root / "clips")
    footage_dir = property(lambda self: self.root / "footage")
    lock = property(lambda self: self.root / ".lock")

    def snapshot(self, event: str) -> Path:
        return self.snapshots / f"{event}.jpg"

    def clip(self, event: str) -> Path:
        return self.clips / f"{event}.mp4"

    def footage(self, event: str) -> Path:
        """The event's frames as they came (no drawing), and ``<event>.json`` beside it: where the event is in them."""
        return self.footage_dir / f"{event}.mp4"


@dataclass(frozen=True)
class ClipRecord:
    """One scored clip in ``clips.json``: where it came from and what it was scored with."""

    path: str  # the source video or frame folder, absolute
    kind: str  # "video" | "frames"
    scene: str | None
    frames: int
    fps: float | None  # the source's frame rate (None for frame folders)
    labelled: bool
    reference: str  # the model that scored it ("all", or its scene): names RUN/normal_scores/<reference>.npy
    pixel_mask: str | None
    source: dict  # source_fingerprint(path) when scored: a changed source is re-scored
    scored_with: dict  # the model's digest and the scoring settings the scores depend on
    backend: str = "torch"  # what ran the model (vad.runtime.export): runtimes score as torch does, to float tolerance

    @classmethod
    def of(cls, clip: Clip, reference: str, scored_with: dict, source: dict | None = None,
           backend: str = "torch") -> ClipRecord:
        """The record of ``clip``; ``source`` is its :func:`source_fingerprint` when the caller already has it."""
        return cls(str(Path(clip.path).resolve()), clip.kind, clip.scene, clip.num_frames, clip.fps,
                   clip.labels is not None, reference,
                   str(Path(clip.pixel_mask).resolve()) if clip.pixel_mask is not None else None,
                   source if source is not None else source_fingerprint(clip), scored_with, backend)


def read_manifest(run: RunFolder, parts: bool = True) -> dict[str, ClipRecord]:
    """``clips.json`` with, when ``parts``, the per-rank parts of a distributed scoring on top (merged at its end;
    left behind when it was interrupted, and their clips are done)."""
    paths = [run.manifest, *(run.rank_parts() if parts else [])]
    records: dict[str, ClipRecord] = {}
    for path in paths:
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object of clips")
            records.update({name: ClipRecord(**entry) for name, entry in data.items()})
        except (ValueError, TypeError) as err:
            raise RunFolderError(f"{path}: not a manifest of this vad version ({err}); score the run again with "
                                 f"--overwrite, or into a new run folder") from None
    return records


def write_manifest(records: dict[str, ClipRecord], path: Path) -> None:
    write_text(json.dumps({n: dataclasses.asdict(r) for n, r in records.items()}, indent=2), path)


def merge_manifest_parts(run: RunFolder) -> None:
    """Fold the per-rank manifest parts into ``clips.json`` and delete them."""
    write_manifest(read_manifest(run), run.manifest)
    for part in run.rank_parts():
        part.unlink()


def path_tag(path: Path | str) -> str:
    """Six hex digits of the SHA-1 of a source's absolute path: what tells two sources of one name apart."""
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:6]


def assign_names(clips: Sequence[Clip], records: dict[str, ClipRecord]) -> tuple[list[Clip], list[str]]:
    """Clip names that never make one source's results overwrite another's: a source scored before keeps the name
    it got then; a new one takes its reader's name (a file stem, a folder name) when no other source has it, else
    that name with :func:`path_tag` of its path (``day-3fa2c1``). Returns the clips, renamed where needed, and a
    line for each renamed clip."""
    by_path = {rec.path: name for name, rec in records.items()}
    taken = {name: rec.path for name, rec in records.items()}
    out, lines = [], []
    for clip in clips:
        path = str(Path(clip.path).resolve())
        name = by_path.get(path)
        if name is None:
            name = clip.name
            if taken.get(name, path) != path:
                owner = taken[name]
                name = f"{clip.name}-{path_tag(path)}"
                lines.append(f"clip {name}: {path} (the name {clip.name} is taken by {owner})")
            if taken.get(name, path) != path:
                raise RunFolderError(f"clip names {name!r} of {path} and {taken[name]} collide; score one of them into "
                                     "another run folder")
        taken[name] = by_path[path] = path
        out.append(renamed(clip, name))
    return out, lines


def source_fingerprint(clip: Clip) -> dict:
    """What identifies a clip's source without reading it: the absolute path and the size and modification time of
    the video (of every frame file, summed and latest, for a frame folder)."""
    path = Path(clip.path).resolve()
    files = [Path(p) for p in clip.frame_paths] if clip.kind == "frames" else [path]
    stats = [f.stat() for f in files]
    return {"path": str(path), "files": len(files), "bytes": sum(s.st_size for s in stats),
            "mtime_ns": max(s.st_mtime_ns for s in stats)}


def file_digest(path: Path) -> str:
    """SHA-1 of a file's bytes (a model's identity; about 0.1 s for a 100 MB checkpoint)."""
    h = hashlib.sha1()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_output(root: Path) -> None:
    """Create run folder ``root`` (a file there, or a folder that cannot be written, is an error naming it)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"{root} is a file; expected a run folder (a new or existing directory)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create the run folder {root}: {err.strerror}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise RunFolderError(f"the run folder {root} is not writable; choose another --out / --run or fix its "
                             "permissions")


_HELD: set[tuple[str, int]] = set()  # (resolved folder, thread) of the locks this process holds
_HOLDING = threading.Lock()


@contextmanager
def locked(root: Path, command: str, wait: float = 0.0, reentrant: bool = False) -> Iterator[None]:
    """Hold ``root/.lock`` while ``command`` writes the run folder; a second command on the same folder stops (after
    waiting up to ``wait`` seconds for the holder) with an error naming the holder. Temporary files left by an
    interrupted command are swept on entry. ``reentrant``: a folder the calling thread holds already is not locked
    again (else that is a second command, refused as any other)."""
    prepare_output(root)
    key = (str(Path(root).resolve()), threading.get_ident())
    with _HOLDING:
        mine = reentrant and key in _HELD
    if mine:  # this thread holds it already (a command's folder, and a camera writing into it)
        yield
        return
    path = Path(root) / ".lock"
    fh = path.open("a+")
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise RunFolderError(f"{root} is in use by another vad command ({holder}); wait for it to finish, "
                                     "or use another run folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"'{command}', pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        sweep_temporaries(Path(root))
        with _HOLDING:
            _HELD.add(key)
        try:
            yield
        finally:
            with _HOLDING:
                _HELD.discard(key)
    finally:
        fh.close()  # releases the lock


@contextmanager
def writing(folder: Path, command: str, existing: bool) -> Iterator[None]:
    """Hold the lock of run folder ``folder`` while ``command`` writes it (:func:`locked`); ``existing``: the command
    works on a run already there (``score``, ``evaluate``, ...), checked before the lock is taken (and its file
    made)."""
    if existing:
        if not folder.is_dir():
            raise RunFolderError(f"run folder not found: {folder}; train first (vad train ... --out {folder})")
        if not RunFolder(folder).is_run():
            raise RunFolderError(f"{folder} is not a run folder (no config.yaml, model.pt or clips.json); give the "
                                 "folder that 'vad train' or 'vad run' wrote")
    with locked(folder, command):
        yield


def sweep_temporaries(root: Path) -> list[Path]:
    """Delete the temporary files (``atomic_path``'s) an interrupted command left anywhere under ``root``; call
    only while holding the folder's lock. Returns what was deleted."""
    stale = [p for p in root.rglob(f"{TEMP_PREFIX}*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class ScoreBook:
    """The manifest while clips are scored: which clips are done, and with what. A clip is done when its scores
    (and maps, when asked for) exist and its record has the same model, settings and source as now, so a retrained
    model, other settings, or a changed source video re-scores it. With several ranks each writes its own part,
    which rank 0 folds into ``clips.json`` (:func:`merge_manifest_parts`). ``fresh`` starts from an empty manifest
    (``score --overwrite``: an unreadable one is replaced)."""

    def __init__(self, run: RunFolder, rank: int = 0, world_size: int = 1, fresh: bool = False) -> None:
        self.run, self.world_size = run, world_size
        self.records = {} if fresh else read_manifest(run)
        self.mine: dict[str, ClipRecord] = {}  # this rank's new records
        self.part = run.rank_part(rank)
        self._sources: dict[str, dict] = {}  # clip -> source fingerprint, taken once (a stat per frame file)

    def names(self, clips: Sequence[Clip]) -> tuple[list[Clip], list[str]]:
        """:func:`assign_names` against this manifest."""
        return assign_names(clips, self.records)

    def source(self, clip: Clip) -> dict:
        if clip.name not in self._sources:
            self._sources[clip.name] = source_fingerprint(clip)
        return self._sources[clip.name]

    def is_done(self, clip: Clip, scored_with: dict, maps: bool) -> bool:
        rec = self.records.get(clip.name)
        return (rec is not None and rec.scored_with == scored_with and rec.source == self.source(clip)
                and self.run.scores(clip.name).is_file() and (not maps or self.run.maps(clip.name).is_file()))

    def changed_sources(self, clips: list[Clip]) -> list[str]:
        """A line for each clip whose source was modified since it was scored."""
        out = []
        for c in clips:
            rec = self.records.get(c.name)
            if rec is not None and rec.source != self.source(c):
                out.append(f"clip {c.name}: its source {rec.path} was modified since it was scored; scoring it again")
        return out

    def record(self, clip: Clip, reference: str, scored_with: dict, backend: str = "torch") -> None:
        """Clip ``clip`` is scored: save its labels and its record (after each clip, so scoring is resumable)."""
        if clip.labels is not None:
            save_npy(np.asarray(clip.labels, dtype=np.uint8), self.run.labels(clip.name))
        self.records[clip.name] = self.mine[clip.name] = ClipRecord.of(clip, reference, scored_with, self.source(clip),
                                                                       backend)
        if self.world_size > 1:
            write_manifest(self.mine, self.part)
        else:
            write_manifest(self.records, self.run.manifest)
