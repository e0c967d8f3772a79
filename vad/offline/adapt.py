"""Learning from an operator's verdicts: the run's model fine-tuned with the frames of events marked normal.

``vad adapt --run RUN`` reads the verdicts (``RUN/feedback.jsonl``: the last per event wins; a live event's verdict
names its own footage, in ``RUN/footage/``). Events marked *normal* become normal training footage; events marked
*anomaly* never train, and footage an earlier adaptation learned whose event is now so marked leaves it (``extra_clips``
in the checkpoint names each piece's event); test labels are never read. The run's students are fine-tuned from its
model (one cycle peaking at ``lr``) in ``RUN/adapt/<time>/``; the hold-out (the last ``train.val_fraction`` of every
clip and event) selects the checkpoint and gives the normal reference. The current ``model.pt`` is kept as
``RUN/models/<time>.pt`` and the new one takes its place; the next ``vad score`` scores the old model's clips again.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from vad.config import load_config
from vad.errors import UsageError
from vad.io.decode import as_clip
from vad.io.records import Clip, renamed
from vad.offline.train import train
from vad.review.verdicts import known_events, read_verdicts
from vad.runs import RunFolder, RunFolderError, read_manifest
from vad.runtime.checkpoint import atomic_save, read_checkpoint
from vad.runtime.prepare import training_clips

log = logging.getLogger(__name__)


def footage_name(verdict: dict) -> str:
    """The name of the clip an event's frames train as: a live event's footage file stem, else ``<clip>@<start>``."""
    return verdict["clip"] if "footage" in verdict else f"{verdict['clip']}@{verdict['start']}"


def withdrawn(extra: dict[str, dict], given: dict[str, dict]) -> list[str]:
    """The footage a model learned from (its ``extra_clips``) whose event's latest verdict is now *anomaly*."""
    by_name = {footage_name(v): e for e, v in given.items()}  # models from before footage named its event
    out = []
    for name, entry in extra.items():
        event = entry.get("event") or by_name.get(name)
        if event is not None and given.get(event, {}).get("verdict") == "anomaly":
            out.append(name)
    return sorted(out)


def _verdicts(run: RunFolder) -> dict[str, dict]:
    """The run's verdicts (:func:`vad.review.verdicts.read_verdicts`); lines that are not, skipped with a note."""
    given, skipped = read_verdicts(run)
    if skipped:
        log.warning(f"note: {run.feedback} line{'s' if len(skipped) > 1 else ''} {', '.join(map(str, skipped))}: "
                    "not verdicts (a torn or edited line); skipped")
    return given


def _nothing_marked(run: RunFolder) -> UsageError:
    return UsageError(f"no event of {run.root} is marked normal (vad review --run {run.root}, or vad feedback --run "
                      f"{run.root} --event ID --verdict normal); nothing to learn from")


def normal_footage(run: RunFolder, required: bool = True, given: dict[str, dict] | None = None
                   ) -> tuple[list[Clip], dict[str, tuple[int, int]], dict[str, str]]:
    """The frames of the events marked normal: ``(clips, {clip: (start, stop)}, {clip: event id})``; each event is a
    clip of its own (:func:`footage_name`) over its source. None marked normal: a :class:`UsageError` when
    ``required``. ``given``: the verdicts already read (:func:`vad.review.verdicts.read_verdicts`)."""
    given = _verdicts(run) if given is None else given
    marked = {e: v for e, v in given.items() if v["verdict"] == "normal"}
    if not marked and required:
        raise _nothing_marked(run)
    offline = [e for e, v in marked.items() if "footage" not in v]
    events = known_events(run) if offline else {}
    manifest = read_manifest(run, parts=False) if offline else {}
    clips, ranges, names = [], {}, {}
    for eid, v in sorted(marked.items()):
        if "footage" in v:  # a live event (vad serve): its frames, copied into the run with the verdict
            path = run.root / v["footage"]
            if not path.is_file():
                raise RunFolderError(f"event {eid}: its footage {path} is gone; give the verdict again from the "
                                     "control room while the site still keeps the event, or remove the line")
            clips.append(renamed(as_clip(path), v["clip"]))
            ranges[v["clip"]] = (int(v["start"]), int(v["end"]) + 1)
            names[v["clip"]] = eid
            continue
        e = events.get(eid) or v  # an event of an earlier evaluation: its verdict line says where it was
        record = manifest.get(e["clip"])
        if record is None:
            raise RunFolderError(f"event {eid}: clip {e['clip']} is not scored in {run.root}")
        name = footage_name(e)
        clips.append(renamed(as_clip(Path(record.path)), name))
        ranges[name] = (int(e["start"]), int(e["end"]) + 1)
        names[name] = eid
    return clips, ranges, names


def adapt(run_path: Path | str, epochs: int = 4, lr: float = 3e-4, device: str = "auto",
          progress: bool = True) -> Path:
    """Fine-tune the run's model with the frames of events marked normal (see the module docstring); returns the new
    ``model.pt``."""
    run = RunFolder(run_path)
    if not run.model.is_file():
        raise RunFolderError(f"{run.model} not found: adapt fine-tunes a run's one model (a run trained per scene: "
                             "not yet)")
    cfg = load_config(run.config, saved=True)
    given = _verdicts(run)  # read once: a verdict given meanwhile waits for the next adapt
    some_anomaly = any(v["verdict"] == "anomaly" for v in given.values())
    extra, extra_ranges, names = normal_footage(run, not some_anomaly, given)  # before the model is read
    old = read_checkpoint(run.model)
    gone = withdrawn(old.get("extra_clips", {}), given)
    if not names and not gone:
        raise _nothing_marked(run)
    marked = sorted(names.values())
    base, base_ranges = training_clips(cfg, old)  # with the footage of earlier adaptations
    base = [b for b in base if b.name not in gone]
    new_extra = [c for c in extra if c.name not in {b.name for b in base}]
    clips = [*base, *new_extra]
    ranges = {k: r for k, r in {**base_ranges, **extra_ranges}.items() if k not in gone}
    for name in gone:
        log.info(f"adapt: {name} leaves the training footage: its event "
                 f"{old['extra_clips'][name].get('event') or name} is now marked anomaly")
    h, w = old["input_size"]
    tuned = replace(cfg, model=replace(cfg.model, input_height=h, input_width=w),
                    train=replace(cfg.train, epochs=epochs, disc_epochs=epochs, lr=lr, schedule="onecycle"))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    folder = run.adaptations / stamp
    frames = sum(b - a for a, b in extra_ranges.values())
    if progress:
        log.info(f"adapting {run.model} with {len(marked)} event(s) marked normal ({frames} frames) and its "
                 f"{len(base)} training clips: {epochs} epochs at lr {lr:g} -> {folder}")
    t0 = time.perf_counter()
    path = train(clips, tuned, folder, device, progress, ranges=ranges, init=old)
    new = read_checkpoint(path)
    # All footage outside the training split the model has learned from: earlier adaptations' and this one's.
    extra_clips = {**{k: e for k, e in old.get("extra_clips", {}).items() if k not in gone},
                   **{c.name: {"path": str(Path(c.path).resolve()), "range": list(ranges[c.name]),
                               "event": names[c.name]} for c in new_extra}}
    new.update(adapted_from=old.get("adapted_from", []) + [{"time": stamp, "events": marked, "withdrawn": gone}],
               extra_clips=extra_clips)
    run.models.mkdir(parents=True, exist_ok=True)
    kept = run.models / f"{stamp}.pt"
    shutil.copy2(run.model, kept)
    atomic_save(new, run.model)
    if progress:
        log.info(f"adapted in {time.perf_counter() - t0:.0f}s: {run.model} (the previous model: {kept}); clips it "
                 "scored are scored again by the next vad score")
    return run.model
