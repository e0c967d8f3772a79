"""Evidence of a live watch's events: a JPEG snapshot of each event's peak frame with its heatmap
(``OUT/snapshots/<event>.jpg``), an annotated H.264 clip with pre- and post-roll (``OUT/clips/<event>.mp4``) and,
beside it, the same frames as they came (``OUT/footage/<event>.mp4``, no drawing: what ``vad adapt`` can learn from
once an operator says the event was normal) with ``OUT/footage/<event>.json``: ``{"frames": N, "start": I, "end": J,
"fps": F}``, the event's first and last frame in it.

:class:`Evidence` is called from the loop (:meth:`~Evidence.snapshot`, :meth:`~Evidence.begin`,
:meth:`~Evidence.frame`, :meth:`~Evidence.ended`, :meth:`~Evidence.post_roll`) and queues tasks for one thread
that draws and encodes them, so evidence never holds up scoring: beyond ``bound`` queued tasks a frame is dropped at
once, and a snapshot, a clip's beginning or its end waits 5 s at most, then is dropped (both counted in
:attr:`~Evidence.dropped`). A clip is written to a temporary file and renamed when complete; then
``on_written(kind, event, path)`` is called (kind ``snapshot`` or ``clip``) from the evidence thread.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vad.atomic import TEMP_PREFIX, atomic_path, write_text
from vad.config import RenderConfig
from vad.heatmap import font, heat_picture, mark_anomaly
from vad.io.encode import VideoWriter
from vad.live import lower_priority
from vad.live.events import Change, EventTracker, OpenEvent, Scored
from vad.runs import WatchFolder

log = logging.getLogger(__name__)


class Evidence:
    """Snapshots and clips of the events of one watch into ``folder`` (None: none), drawn on the model's heat scale
    ``heat`` ``(low, high)`` with ``render``'s colours; clips at ``fps``, ending ``post_roll`` sampled frames after
    their event."""

    def __init__(self, folder: WatchFolder | None, heat: tuple[float, float], render: RenderConfig, fps: float,
                 post_roll: int, bound: int, snapshots: bool = True, clips: bool = True,
                 on_written: Callable[[str, str, str], None] | None = None) -> None:
        self.folder, self.heat, self.render, self.fps = folder, heat, render, fps
        self.on_written = on_written
        self.post_roll_frames = post_roll
        self.snapshots, self.clips = snapshots, clips
        self.tasks: queue.Queue[tuple] = queue.Queue(maxsize=bound)
        self.dropped = 0  # tasks dropped (counted by the loop, the only thread that queues)
        self.closing: list[tuple[int, str]] = []  # (the seq after which it stops, path) of ended events' clips
        self._writers: dict[str, _ClipWriter] = {}
        self._handlers = {"snapshot": self._write_snapshot, "begin": self._begin_clip, "frame": self._clip_frame,
                          "finish": self._finish_clip}
        self.thread = threading.Thread(target=self._work, name="vad-evidence", daemon=True)

    def paths(self, event: str) -> tuple[str | None, str | None]:
        """``(snapshot, clip)`` paths of ``event`` (an id), each None when not written."""
        folder = self.folder
        snap = str(folder.snapshot(event)) if folder and self.snapshots else None
        clip = str(folder.clip(event)) if folder and self.clips else None
        return snap, clip

    def busy(self) -> set[str]:
        """Ids of the events whose clips are still being written (retention leaves them alone)."""
        return {Path(p).stem for p in list(self._writers)} | {Path(c).stem for _, c in list(self.closing)}

    # --- the loop's side ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def snapshot(self, o: OpenEvent, s: Scored) -> None:
        """``s`` is the new peak of event ``o``: its snapshot (replacing the last)."""
        if o.snapshot:
            self._put(("snapshot", o.snapshot, s.frame.rgb, s.amap, s.calibrated), must=True)

    def begin(self, o: OpenEvent, recent: list[Scored]) -> None:
        """The clip of event ``o``, from the pre-roll frames ``recent`` (those from its first frame on are inside)."""
        if o.clip:
            self._put(("begin", o.clip, recent, o.start), must=True)

    def frame(self, o: OpenEvent, s: Scored, inside: bool) -> None:
        """Frame ``s`` to the clip of ``o`` (``inside``: marked as in the event)."""
        if o.clip:
            self._put(("frame", o.clip, s, inside))

    def ended(self, o: OpenEvent, seq: int | None) -> None:
        """Event ``o`` ended at sampled frame ``seq``: its clip takes ``post_roll`` more frames
        (:meth:`post_roll`), then is finished; ``None``: finished now (no frames to come)."""
        if not o.clip:
            return
        if seq is None:
            self._put(("finish", o.clip), must=True)
        else:
            self.closing.append((seq + self.post_roll_frames, o.clip))

    def follow(self, changes: list[Change], tracker: EventTracker, s: Scored | None, post_roll: bool) -> None:
        """The evidence of ``tracker``'s ``changes`` at frame ``s`` (None: no frame, the tracker was reset): a
        snapshot at a peak, a clip begun with the tracker's recent frames at a start, ended after ``s`` at an end
        (with ``post_roll`` frames after it, when there is a frame), and ``s`` into the clip of the event still open
        (unless the event began with it: its clip did too)."""
        for c in changes:
            if c.kind == "peak":
                self.snapshot(c.event, c.at)
            elif c.kind == "start":
                self.begin(c.event, list(tracker.recent))
            elif c.kind == "end":
                self.ended(c.event, s.frame.seq if s is not None and post_roll else None)
        if s is not None and tracker.open is not None and not any(c.kind == "start" for c in changes):
            self.frame(tracker.open, s, inside=True)

    def post_roll(self, s: Scored) -> None:
        """Frame ``s`` to the clips of ended events still taking post-roll; those complete are finished."""
        for until, clip in list(self.closing):
            self._put(("frame", clip, s, False))
            if s.frame.seq >= until:
                self.closing.remove((until, clip))
                self._put(("finish", clip), must=True)

    def finish_post_roll(self) -> None:
        """Finish now the clips still taking post-roll: no frame will come (the source ended, or the watch stops)."""
        for _, clip in self.closing:
            self._put(("finish", clip), must=True)
        self.closing = []

    def close(self) -> None:
        """Finish the clips still taking post-roll, write what is queued (waiting 60 s at most), stop the thread."""
        self.finish_post_roll()
        self.tasks.put(("quit",))
        self.thread.join(timeout=60)

    def _put(self, task: tuple, must: bool = False) -> None:
        try:
            self.tasks.put(task, timeout=5 if must else 0)  # beginnings and ends wait a little; frames never
        except queue.Full:
            self.dropped += 1

    # --- the thread's side ----------------------------------------------------------------------------------------
    def _work(self) -> None:
        lower_priority()
        while (task := self.tasks.get())[0] != "quit":
            try:
                self._handlers[task[0]](*task[1:])
            except Exception as err:  # evidence never stops scoring; say what failed
                log.warning("note: evidence not written (%s %s): %s", task[0], task[1] if len(task) > 1 else "", err)
        for path, writer in self._writers.items():
            try:
                writer.close()
            except Exception as err:  # the other clips are still closed
                log.warning("note: evidence not written (finish %s): %s", path, err)

    def _picture(self, rgb: np.ndarray, amap: np.ndarray, calibrated: float, inside: bool, text: str) -> np.ndarray:
        """Frame ``rgb`` ``(H, W, 3)`` with its heatmap, the ANOMALY marker when ``inside``, and ``text`` and the
        score at the bottom; cropped to even sizes. Returns ``(H', W', 3)`` uint8."""
        h, w = rgb.shape[:2]
        pic = heat_picture(rgb, amap, self.heat, self.render)[: h - h % 2, : w - w % 2].copy()
        if inside:
            mark_anomaly(pic, pic.shape[0], font(max(12, h // 24)))
        img = Image.fromarray(pic)
        ImageDraw.Draw(img).text((6, pic.shape[0] - 18), f"{text}  score {calibrated:.2f}", fill=(255, 255, 255),
                                 font=font(12))
        return np.asarray(img)

    def _write_snapshot(self, path: str, rgb: np.ndarray, amap: np.ndarray, calibrated: float) -> None:
        pic = self._picture(rgb, amap, calibrated, True, Path(path).stem)
        with atomic_path(Path(path), ".jpg") as tmp:
            Image.fromarray(pic).save(tmp, format="JPEG", quality=88)
        self._written("snapshot", path)

    def _begin_clip(self, path: str, recent: list[Scored], start: int) -> None:
        footage = self.folder.footage(Path(path).stem) if self.folder is not None else None
        self._writers[path] = _ClipWriter(Path(path), self.fps, footage)
        for s in recent:
            self._clip_frame(path, s, s.frame.index >= start)

    def _clip_frame(self, path: str, s: Scored, inside: bool) -> None:
        writer = self._writers.get(path)
        if writer is None:  # its beginning was dropped
            return
        f = s.frame
        writer.write(self._picture(f.rgb, s.amap, s.calibrated, inside, f"frame {f.index}  {f.pts:.1f}s"), f.rgb,
                     inside)

    def _finish_clip(self, path: str) -> None:
        writer = self._writers.pop(path, None)
        if writer is not None:
            writer.close()
            self._written("clip", path)

    def _written(self, kind: str, path: str) -> None:
        if self.on_written is not None:
            try:
                self.on_written(kind, Path(path).stem, path)
            except Exception as err:  # a listener failing leaves the evidence written
                log.warning("note: after writing %s: %s", path, err)


class _Mp4:
    """One MP4, written to a temporary file and renamed when complete (a playable file or none)."""

    def __init__(self, path: Path, fps: float, crf: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.crf, self.writer, self.frames = path, fps, crf, None, 0
        self.tmp = path.with_name(f"{TEMP_PREFIX}{path.stem}.{os.getpid()}.mp4")

    def write(self, pic: np.ndarray) -> None:
        h, w = pic.shape[0] - pic.shape[0] % 2, pic.shape[1] - pic.shape[1] % 2
        if self.writer is None:
            # ultrafast: the clip is encoded beside the scoring loop on the same cores
            self.writer = VideoWriter(self.tmp, w, h, self.fps, crf=self.crf, preset="ultrafast")
            self.size = (h, w)
        if (h, w) != self.size:  # the stream changed resolution mid-event: keep the clip's size
            pic = np.asarray(Image.fromarray(pic).resize(self.size[::-1]))
        self.writer.write(np.ascontiguousarray(pic[: self.size[0], : self.size[1]]))
        self.frames += 1

    def close(self) -> bool:
        """Finish the file; whether there is one (a clip with no frame is none)."""
        if self.writer is None:
            return False
        self.writer.close()
        self.tmp.replace(self.path)
        self.writer = None
        return True


class _ClipWriter:
    """An event's annotated clip and, when ``footage`` is a path, its frames as they came (near-lossless: they may
    become training footage) with the event's place in them (``<footage>.json``)."""

    def __init__(self, path: Path, fps: float, footage: Path | None) -> None:
        self.clip = _Mp4(path, fps, crf=23)
        self.footage = _Mp4(footage, fps, crf=12) if footage is not None else None
        self.inside: list[int] = []  # positions of the event's frames in the footage

    def write(self, pic: np.ndarray, rgb: np.ndarray, inside: bool) -> None:
        self.clip.write(pic)
        if self.footage is not None:
            if inside:
                self.inside.append(self.footage.frames)
            self.footage.write(rgb)

    def close(self) -> None:
        self.clip.close()
        if self.footage is not None and self.footage.close() and self.inside:
            about = {"frames": self.footage.frames, "start": self.inside[0], "end": self.inside[-1],
                     "fps": self.footage.fps}
            write_text(json.dumps(about) + "\n", self.footage.path.with_suffix(".json"))
