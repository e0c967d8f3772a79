"""Learning from an operator's verdicts: the run's model fine-tuned with the frames of events marked normal.

``vad adapt --run RUN``:

1. reads the verdicts (``RUN/feedback.jsonl``: the last verdict per event wins) and the events they name
   (``RUN/events.json``: clip and frames) and the clips' sources (the manifest); a live event's verdict (given in
   ``vad serve``'s control room) names its own footage, copied into ``RUN/footage/``. Events marked *normal* become
   normal training footage: each event's frames, from its source. Events marked *anomaly* never train (they stay
   labels for the review page); test labels are never read.
2. fine-tunes the run's students from its model (``train.epochs`` := ``epochs``, one cycle peaking at ``lr``) on the
   model's training clips plus those frames, in ``RUN/adapt/<time>/`` (a training folder: checkpoints, log). The
   hold-out, the last ``train.val_fraction`` of every clip and of every fed-back event, selects the checkpoint and
   gives the normal reference (branch and position statistics, hold-out scores, threshold): normal data only.
3. keeps the current ``model.pt`` as ``RUN/models/<time>.pt`` and puts the new model in its place; clips scored by
   the old model are scored again by the next ``vad score`` (their records name the old model's digest).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from vad.checkpoint import atomic_save, read_checkpoint
from vad.config import load_config
from vad.errors import UsageError
from vad.io.decode import as_clip
from vad.io.records import Clip, renamed
from vad.runs import RunFolder, RunFolderError, read_manifest
from vad.verdicts import known_events, read_verdicts

log = logging.getLogger(__name__)


def normal_footage(run: RunFolder) -> tuple[list[Clip], dict[str, tuple[int, int]], list[str]]:
    """The frames of the events marked normal: ``(clips, {clip: (start, stop)}, event ids)``; each event is a clip of
    its own (named ``<clip>@<start>``) over its source."""
    given, skipped = read_verdicts(run)
    if skipped:
        log.warning(f"note: {run.feedback} line{'s' if len(skipped) > 1 else ''} {', '.join(map(str, skipped))}: "
                    "not verdicts (a torn or edited line); skipped")
    marked = {e: v for e, v in given.items() if v["verdict"] == "normal"}
    if not marked:
        raise UsageError(f"no event of {run.root} is marked normal (vad review --run {run.root}, or vad feedback --run "
                         f"{run.root} --event ID --verdict normal); nothing to learn from")
    offline = [e for e, v in marked.items() if "footage" not in v]
    events = known_events(run) if offline else {}
    manifest = read_manifest(run, parts=False) if offline else {}
    clips, ranges = [], {}
    for eid, v in sorted(marked.items()):
        if "footage" in v:  # a live event (vad serve): its frames, copied into the run with the verdict
            path = run.root / v["footage"]
            if not path.is_file():
                raise RunFolderError(f"event {eid}: its footage {path} is gone; give the verdict again from the "
                                     "control room while the site still keeps the event, or remove the line")
            clips.append(renamed(as_clip(path), v["clip"]))
            ranges[v["clip"]] = (int(v["start"]), int(v["end"]) + 1)
            continue
        e = events.get(eid) or v  # an event of an earlier evaluation: its verdict line says where it was
        record = manifest.get(e["clip"])
        if record is None:
            raise RunFolderError(f"event {eid}: clip {e['clip']} is not scored in {run.root}")
        name = f"{e['clip']}@{e['start']}"
        clips.append(renamed(as_clip(Path(record.path)), name))
        ranges[name] = (int(e["start"]), int(e["end"]) + 1)
    return clips, ranges, sorted(marked)


def adapt(run_path: Path | str, epochs: int = 4, lr: float = 3e-4, device: str = "auto",
          progress: bool = True) -> Path:
    """Fine-tune the run's model with the frames of events marked normal (see the module docstring); returns the new
    ``model.pt``."""
    from vad.session import training_clips
    from vad.train import train

    run = RunFolder(run_path)
    if not run.model.is_file():
        raise RunFolderError(f"{run.model} not found: adapt fine-tunes a run's one model (a run trained per scene: "
                             "not yet)")
    cfg = load_config(run.config, saved=True)
    extra, extra_ranges, marked = normal_footage(run)
    old = read_checkpoint(run.model)
    base, base_ranges = training_clips(cfg, old)  # with the footage of earlier adaptations
    new_extra = [c for c in extra if c.name not in {b.name for b in base}]
    clips = [*base, *new_extra]
    ranges = {**base_ranges, **extra_ranges}
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
    extra_clips = {**old.get("extra_clips", {}),
                   **{c.name: {"path": str(Path(c.path).resolve()), "range": list(ranges[c.name])} for c in new_extra}}
    new.update(adapted_from=old.get("adapted_from", []) + [{"time": stamp, "events": marked}],
               extra_clips=extra_clips)
    run.models.mkdir(parents=True, exist_ok=True)
    kept = run.models / f"{stamp}.pt"
    shutil.copy2(run.model, kept)
    atomic_save(new, run.model)
    if progress:
        log.info(f"adapted in {time.perf_counter() - t0:.0f}s: {run.model} (the previous model: {kept}); clips it "
                 "scored are scored again by the next vad score")
    return run.model
