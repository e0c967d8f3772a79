"""Operators' verdicts on a site's live events: read from and written to each camera's run
(:mod:`vad.review.verdicts`), each one recorded published as a :class:`~vad.site.core.Verdict`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from vad.errors import UnknownEventError
from vad.live.eventlog import event_log
from vad.review.verdicts import read_verdicts, record_live_verdict
from vad.runs import RunFolder, WatchFolder
from vad.site.cameras import CameraTable
from vad.site.core import Verdict

log = logging.getLogger(__name__)


class SiteVerdicts:
    """The verdicts of the cameras in ``table`` (outputs under ``out``)."""

    def __init__(self, table: CameraTable, out: Path, publish: Callable[[Verdict], None]) -> None:
        self.table, self.out, self.publish = table, out, publish

    def read(self) -> tuple[dict[str, dict], list[str]]:
        """The verdicts on this site's live events (``{CAMERA/EVENT: line}``), from each camera's run, and the lines
        that are not verdicts (``FILE:LINE``)."""
        verdicts, bad = {}, []
        for run, names in self.table.runs().items():
            given, skipped = read_verdicts(run)
            verdicts.update({k: v for k, v in given.items() if k.partition("/")[0] in names and "/" in k})
            bad += [f"{Path(run) / 'feedback.jsonl'}:{n}" for n in skipped]
        return verdicts, bad

    def record(self, key: str, verdict: str, via: str = "site") -> dict:
        """Record an operator's verdict on live event ``key`` (``CAMERA/EVENT``) into the camera's run
        (:func:`vad.review.verdicts.record_live_verdict`), and publish it."""
        camera, _, event = key.partition("/")
        entry = self.table.get(camera)
        if entry is None:
            raise UnknownEventError(f"unknown camera {camera!r} in {key!r}; cameras: "
                                    f"{', '.join(sorted(self.table.names()))}")
        folder = WatchFolder(self.out / camera)
        if not event_log(folder.events).has(event):
            raise UnknownEventError(f"unknown event {event!r} of camera {camera} (not in {folder.events})")
        line = record_live_verdict(RunFolder(entry.cfg.run), camera, event, verdict, folder.footage(event), via)
        log.info(f"verdict: {key} {verdict} ({via}) -> {entry.cfg.run}/feedback.jsonl")
        self.publish(Verdict(key, line))
        return line
