"""An operator's verdicts on a run's events: ``RUN/feedback.jsonl``, its one writer and its one reader.

Each verdict is one JSON line (the last line of an event wins)::

    {"event": ID, "clip": CLIP, "start": FRAME, "end": FRAME, "verdict": "normal"|"anomaly", "time": UTC, "via": WHO}

A verdict on a live event (given in ``vad serve``'s control room, :func:`record_live_verdict`) names it
``<camera>/<event>`` and adds ``"camera"`` and ``"footage"``: the event's frames as the camera sent them, copied from
the site's ``OUT/<camera>/footage/`` into ``RUN/footage/<camera>-<event>.mp4`` (``clip`` is that file's stem; ``start``
and ``end`` are the event's frames in it). The copy is the run's: the site's retention never deletes it, and
``vad adapt`` trains on it as it does on the scored clips of an offline event.

Writers (the review page's server, ``vad feedback``, a site service) call :func:`record_verdict`; readers (the
review page, ``vad adapt``) call :func:`read_verdicts`. Lines are appended, never rewritten: the file is opened for
append under a lock (a thread lock for a server's threads, ``flock`` for other processes), flushed and fsync'd
before the verdict is acknowledged. Rewriting the whole file atomically would cost a copy per verdict and, across
processes, lose one of two verdicts given at once.

One rule for lines that are not verdicts (torn by a crash mid-write, edited by hand, an unknown verdict): every
reader skips them and reports their numbers; none is fatal. A writer starts a new line after a torn last one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path

from vad.atomic import atomic_path
from vad.errors import InputError, UnknownEventError, UsageError
from vad.runs import RunFolder, RunFolderError

__all__ = ["VERDICTS", "UnknownEventError", "known_events", "read_verdicts", "record_live_verdict", "record_verdict"]

VERDICTS = ("normal", "anomaly")

_WRITING = threading.Lock()  # a server's threads; flock keeps other processes out


def _folder(run: RunFolder | Path | str) -> RunFolder:
    return run if isinstance(run, RunFolder) else RunFolder(run)


def known_events(run: RunFolder | Path | str) -> dict[str, dict]:
    """``{event id: event}`` of ``RUN/events.json`` (the events evaluate found last)."""
    folder = _folder(run)
    path = folder.events_json
    if not path.is_file():
        raise RunFolderError(f"{path} not found: evaluate the run first (vad evaluate --run {folder.root})")
    try:
        return {e["id"]: e for e in json.loads(path.read_text())}
    except (ValueError, TypeError, KeyError) as err:
        raise InputError(f"{path}: not an events file of this vad version ({err}); evaluate the run again") from None


def record_verdict(run: RunFolder | Path | str, event: str, verdict: str, via: str = "cli") -> dict:
    """Append an operator's ``verdict`` on ``event`` (an id of ``RUN/events.json``, or of an earlier evaluation that
    already has a verdict: it can be changed) to ``RUN/feedback.jsonl``,
    flushed and fsync'd before it returns; return the line written. ``via``: who gave it (``cli``, ``review``, ...).
    An unknown verdict is a :class:`UsageError`, an unknown event an :class:`UnknownEventError`."""
    if verdict not in VERDICTS:
        raise UsageError(f"verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
    folder = _folder(run)
    known = known_events(folder)
    if event not in known:  # an event of an earlier evaluation, judged then: its verdict can still be changed
        earlier = read_verdicts(folder)[0].get(event)
        if earlier is not None and "footage" not in earlier:
            known[event] = {k: earlier[k] for k in ("clip", "start", "end")}
    if event not in known:
        some = ", ".join(list(known)[:5]) + (", ..." if len(known) > 5 else "")
        raise UnknownEventError(f"unknown event {event!r} in {folder.root}: " + (
            f"known events include {some} (see events.csv)" if known else "the run has no events"))
    e = known[event]
    line = {"event": event, "clip": e["clip"], "start": e["start"], "end": e["end"], "verdict": verdict,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"), "via": via}
    _append(folder.feedback, json.dumps(line))
    return line


def record_live_verdict(run: RunFolder | Path | str, camera: str, event: str, verdict: str, footage: Path | None,
                        via: str = "site") -> dict:
    """Append an operator's ``verdict`` on live event ``event`` of ``camera`` to ``RUN/feedback.jsonl`` (see the
    module docstring); ``footage``: the event's ``OUT/<camera>/footage/<event>.mp4`` (with its ``.json``), copied
    into the run once. A *normal* verdict needs it (it is what ``vad adapt`` learns from): without it a
    :class:`~vad.errors.InputError` says why."""
    if verdict not in VERDICTS:
        raise UsageError(f"verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
    folder = _folder(run)
    name = f"{camera}-{event}"
    about_path = None if footage is None else Path(footage).with_suffix(".json")
    have = footage is not None and Path(footage).is_file() and about_path.is_file()
    if not have and verdict == "normal":
        raise InputError(f"event {camera}/{event}: its footage ({footage}) is not written (yet: the clip is finished "
                         "after its post-roll; or clips are off for this camera, or retention deleted it); a normal "
                         "verdict needs the frames vad adapt learns from")
    line = {"event": f"{camera}/{event}", "clip": name, "start": 0, "end": 0, "verdict": verdict,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"), "via": via,
            "camera": camera}
    if have:
        try:
            about = json.loads(about_path.read_text())
            line.update(start=int(about["start"]), end=int(about["end"]))
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{about_path}: not the footage note vad serve writes ({err})") from None
        dest = folder.footage / f"{name}.mp4"
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dest, ".mp4") as tmp:
                shutil.copyfile(footage, tmp)
        line["footage"] = dest.relative_to(folder.root).as_posix()
    _append(folder.feedback, json.dumps(line))
    return line


def read_verdicts(run: RunFolder | Path | str) -> tuple[dict[str, dict], list[int]]:
    """``({event id: its last verdict line}, numbers of the lines that are not verdicts)`` of ``RUN/feedback.jsonl``
    (no file yet: both empty). Blank lines are neither."""
    path = _folder(run).feedback
    verdicts: dict[str, dict] = {}
    bad: list[int] = []
    if not path.is_file():
        return verdicts, bad
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        line = _verdict(raw)
        if line is None:
            bad.append(number)
        else:
            verdicts[line["event"]] = line
    return verdicts, bad


def _verdict(raw: bytes) -> dict | None:
    """The verdict line ``raw`` holds; ``None`` if it holds none (torn, edited, not JSON, an unknown verdict)."""
    try:
        line = json.loads(raw.decode())
    except ValueError:  # also UnicodeDecodeError: a line torn inside a character
        return None
    ok = (isinstance(line, dict) and isinstance(line.get("event"), str) and line.get("verdict") in VERDICTS
          and isinstance(line.get("clip"), str)
          and all(isinstance(line.get(k), int) and not isinstance(line.get(k), bool) for k in ("start", "end")))
    return line if ok else None


def _append(path: Path, text: str) -> None:
    """Append one line, durably: under the locks, after a newline if the last line was torn by a crash."""
    with _WRITING, path.open("a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        size = fh.seek(0, os.SEEK_END)
        torn = False
        if size:
            fh.seek(size - 1)
            torn = fh.read(1) != b"\n"
        fh.write((b"\n" if torn else b"") + text.encode() + b"\n")  # append mode: at the end, wherever we read
        fh.flush()
        os.fsync(fh.fileno())
    if size == 0:  # a new file: its directory entry too
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
