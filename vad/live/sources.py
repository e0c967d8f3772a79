"""Live sources: a camera stream, a webcam or a file replayed, read in a thread into a bounded queue.

:class:`Source` opens ``rtsp://`` (TCP or UDP transport; ``listen``: wait for a publisher, RTSP server mode),
``http(s)://`` (MPEG-TS, MJPEG, HLS), ``udp://`` MPEG-TS, ``srt://`` (where FFmpeg has it), a webcam
(``/dev/videoN`` or ``webcam:N``), a video file or a folder of frames, through PyAV (every network open and read has a
timeout). Frames are sampled by their timestamps to the rate the model was trained at, and put into a bounded queue
as :class:`Frame` records; when the consumer falls behind, the oldest waiting frame is dropped (and counted), so the
queue never holds more than ``queue_size`` frames. A source that fails, refuses or stalls (no frame for
``stall_timeout`` seconds) is reopened with backoff, forever unless ``max_retries``; the outage becomes a
:class:`Gap` record in the queue (never a black frame). A file ends the stream at its end (``realtime``: read at its
own frame rate, as a camera would send it).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vad.errors import UsageError
from vad.io.decode import read_image
from vad.io.probe import frame_rotation
from vad.io.records import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_images

NETWORK = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "srt://", "rtmp://", "tcp://")


@dataclass
class Frame:
    """One frame as it left the source."""

    index: int  # the frame's index since the source was opened (frames dropped on the way counted)
    seq: int  # the index among the frames sampled for scoring: consecutive unless frames were dropped or lost
    pts: float  # seconds since the stream's first frame, by its timestamps (across reconnections)
    received: float  # time.monotonic() when it was decoded
    rgb: np.ndarray = field(repr=False)  # (H, W, 3) uint8, upright


@dataclass
class Gap:
    """The source was lost from ``start`` to ``end`` (wall-clock seconds since the epoch; pts of the last frame before
    and the first after)."""

    start: float
    end: float
    pts_before: float | None
    pts_after: float | None
    reason: str


@dataclass
class End:
    """The source ended (a file's end, or it could not be reopened): nothing more will come."""

    reason: str


def describe_source(source: str) -> str:
    """What kind of source ``source`` is, in words (for the banner)."""
    if source.startswith(NETWORK):
        return source.split("://")[0] + " stream"
    if source.startswith("webcam:") or source.startswith("/dev/video"):
        return "webcam"
    return "folder of frames" if Path(source).is_dir() else "file"


class Source:
    """A source read in a background thread; iterate :meth:`items` (or :meth:`get`) for :class:`Frame`,
    :class:`Gap` and a final :class:`End`."""

    def __init__(self, source: str, fps: float | None = None, *, queue_size: int = 8, realtime: bool = False,
                 transport: str = "tcp", listen: bool = False, open_timeout: float = 10.0,
                 stall_timeout: float = 5.0, max_retries: int | None = None,
                 backoff: tuple[float, float] = (1.0, 30.0), wake: threading.Event | None = None) -> None:
        self.source, self.fps = str(source), fps
        self.realtime, self.transport, self.listen = realtime, transport, listen
        self.open_timeout, self.stall_timeout = open_timeout, stall_timeout
        self.max_retries, self.backoff = max_retries, backoff
        self.is_network = self.source.startswith(NETWORK)
        self.is_device = self.source.startswith("webcam:") or self.source.startswith("/dev/video")
        self.is_file = not (self.is_network or self.is_device)
        check_source(self.source)
        self.queue_size = max(1, queue_size)
        self._items: deque = deque()  # frames (at most queue_size), gaps and the end, oldest first
        self._ready = threading.Condition()
        self._wake = wake  # set whenever an item is queued (a consumer of several sources waits on one event)
        self.last_frame: float | None = None  # time.monotonic() of the last frame queued
        self.dropped = 0  # frames dropped because the consumer fell behind
        self.decoded = 0  # frames decoded (the next frame's index)
        self.sampled = 0  # frames sampled for scoring (the next one's seq)
        self.source_fps: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"vad-source {self.source}", daemon=True)
        self._pts_offset = 0.0  # pts of a reopened stream continue the timeline
        self._first_pts: float | None = None
        self._last_pts: float | None = None
        self._next_sample = None

    # --- the consumer's side ------------------------------------------------------------------------------------
    def start(self) -> Source:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def get(self, timeout: float | None = None) -> Frame | Gap | End | None:
        """The next item (:class:`Frame`, :class:`Gap` or :class:`End`), or ``None`` after ``timeout`` seconds."""
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            item = self._items.popleft() if self._items else None
            self._ready.notify_all()  # a reader waiting for room
            return item

    def stalled(self) -> bool:
        """Whether a live source has sent no frame for ``stall_timeout`` seconds (it is being reopened)."""
        return (not self.is_file and self.last_frame is not None
                and time.monotonic() - self.last_frame > self.stall_timeout)

    def items(self, poll: float = 0.2) -> Iterator:
        while True:
            item = self.get(poll)
            if item is None:
                if self._stop.is_set() and not self._thread.is_alive():
                    return
                continue
            yield item
            if isinstance(item, End):
                return

    # --- the reader thread ------------------------------------------------------------------------------------------
    def _put(self, item) -> None:
        """Queue ``item``; when ``queue_size`` frames wait already, the stalest frame gives way (counted), except
        for a file read as fast as it decodes: it waits for room (a file is not live; every frame is scored)."""
        with self._ready:
            full = lambda: sum(isinstance(i, Frame) for i in self._items) >= self.queue_size  # noqa: E731
            if isinstance(item, Frame) and self.is_file and not self.realtime:
                while full() and not self._stop.is_set():
                    self._ready.wait(0.1)
            elif isinstance(item, Frame) and full():
                stalest = next(i for i in self._items if isinstance(i, Frame))
                self._items.remove(stalest)
                self.dropped += 1
            self._items.append(item)
            self._ready.notify_all()
        if isinstance(item, Frame):
            self.last_frame = item.received
        if self._wake is not None:
            self._wake.set()

    def _run(self) -> None:
        retries, wait = 0, self.backoff[0]
        lost_at = lost_pts = None
        reason = "end of the source"
        while not self._stop.is_set():
            try:
                opened = False
                for rgb, pts in self._frames():
                    if not opened:
                        opened, retries, wait = True, 0, self.backoff[0]
                        if lost_at is not None:
                            self._pts_offset = (self._last_pts or 0.0) + (time.time() - lost_at)
                            self._put(Gap(lost_at, time.time(), lost_pts, None, reason))
                            lost_at = None
                    self._emit(rgb, pts)
                    if self._stop.is_set():
                        break
                if self.is_file:
                    self._put(End("end of the file"))
                    return
                reason = "the stream ended"
            except Exception as err:  # a dropped, refused or stalled source: reopened below
                reason = f"{type(err).__name__}: {err}"
            if self._stop.is_set():
                break
            if self.is_file:
                self._put(End(f"cannot read {self.source}: {reason}"))
                return
            if lost_at is None:
                lost_at, lost_pts = time.time(), self._last_pts
            retries += 1
            if self.max_retries is not None and retries > self.max_retries:
                self._put(End(f"{self.source}: gave up after {self.max_retries} attempts ({reason})"))
                return
            self._stop.wait(wait)
            wait = min(wait * 2, self.backoff[1])
        self._put(End("stopped"))

    def _emit(self, rgb: np.ndarray, pts: float) -> None:
        """Count a decoded frame, sample it to the model's rate by its timestamp, queue it."""
        index = self.decoded
        self.decoded += 1
        if self._first_pts is None:
            self._first_pts = pts
        t = pts - self._first_pts + self._pts_offset
        self._last_pts = t
        if self.fps and self.source_fps and abs(self.source_fps - self.fps) > 0.01 * self.fps:
            if self._next_sample is not None and t + 0.5 / self.source_fps < self._next_sample:
                return  # between two samples at the model's rate
            self._next_sample = (self._next_sample or t) + 1.0 / self.fps
        frame = Frame(index, self.sampled, t, time.monotonic(), rgb)
        self.sampled += 1
        self._put(frame)

    def _frames(self) -> Iterator[tuple[np.ndarray, float]]:
        """``(rgb, pts seconds)`` of the source once opened (one connection); raises when it fails or stalls."""
        path = Path(self.source)
        if self.is_file and path.is_dir():
            yield from self._folder(path)
            return
        import av

        url, fmt, options = self._open_args()
        timeout = None if self.listen else (self.open_timeout, self.stall_timeout)
        with av.open(url, format=fmt, options=options, timeout=timeout) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO" if self.is_file else "SLICE"
            self.source_fps = float(stream.average_rate or stream.guessed_rate or 0) or None
            start, first = time.monotonic(), None
            for frame in container.decode(stream):
                pts = float(frame.time) if frame.time is not None else (self.decoded / (self.source_fps or 25.0))
                if self.realtime and self.is_file:  # a camera sends frames at their time, not as fast as they decode
                    first = pts if first is None else first
                    delay = (pts - first) - (time.monotonic() - start)
                    if delay > 0 and self._stop.wait(delay):
                        return
                rgb = np.rot90(frame.to_ndarray(format="rgb24"), frame_rotation(frame) // 90)
                yield np.ascontiguousarray(rgb), pts

    def _folder(self, path: Path) -> Iterator[tuple[np.ndarray, float]]:
        files = list_images(path)
        rate = self.fps or 25.0
        self.source_fps = rate
        start = time.monotonic()
        for i, f in enumerate(files):
            if self.realtime:
                delay = i / rate - (time.monotonic() - start)
                if delay > 0 and self._stop.wait(delay):
                    return
            yield read_image(f), i / rate

    def _open_args(self) -> tuple[str, str | None, dict]:
        if self.is_device:
            device = self.source if self.source.startswith("/dev/") else f"/dev/video{self.source.split(':', 1)[1]}"
            return device, "v4l2", {}
        options: dict[str, str] = {}
        if self.source.startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = self.transport
            if self.listen:  # RTSP server mode: a publisher pushes to us
                options.update(rtsp_flags="listen", listen_timeout=str(int(self.open_timeout)))
        if self.source.startswith("udp://"):
            # 65,536 packets of 188 bytes (12 MiB, seconds of a camera stream): FFmpeg allocates the whole ring per
            # source, and it becomes resident as it wraps (1,000,000 packets was 188 MB per UDP camera)
            options.update(fifo_size="65536", overrun_nonfatal="1")
        if self.is_network:  # start on the first frames instead of probing seconds of stream
            options.update(probesize="200000", analyzeduration="500000")
        return self.source, None, options


def check_source(source: str) -> None:
    """An error naming ``source`` when it can be no source at all (before any model is loaded)."""
    if source.startswith(NETWORK):
        _check_url(source)
        return
    if source.startswith("webcam:") and not source[7:].isdigit():
        raise UsageError(f"--source {source}: expected webcam:N, N the camera's number (webcam:0)")
    if source.startswith(("webcam:", "/dev/video")):
        return
    path = Path(source)
    if not path.exists():
        raise UsageError(f"--source {source}: no such file or folder; expected a stream URL (rtsp://, http(s)://, "
                         "udp://, srt://), a webcam (/dev/videoN, webcam:N), a video or a frame folder")
    if path.is_file() and path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise UsageError(f"--source {source}: not a video file (suffix {path.suffix!r}); expected one of "
                         f"{sorted(VIDEO_EXTENSIONS)}")
    if path.is_file() and path.stat().st_size == 0:
        raise UsageError(f"--source {source}: an empty file (0 bytes); expected a video")
    if path.is_dir() and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir()):
        raise UsageError(f"--source {source}: the folder holds no frames ({', '.join(sorted(IMAGE_EXTENSIONS))})")


def _check_url(source: str) -> None:
    """A stream URL names a host (or ``@`` for udp's any-address) and a port in 1..65535 when it gives one."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(source)
        port = parts.port
    except ValueError as err:
        raise UsageError(f"--source {source}: not a stream URL ({err}); expected e.g. udp://127.0.0.1:5002 or "
                         "rtsp://HOST/PATH") from None
    if port == 0:
        raise UsageError(f"--source {source}: port 0; expected a port in 1..65535")
    if parts.scheme in ("udp", "srt", "tcp") and port is None:
        raise UsageError(f"--source {source}: no port; expected {parts.scheme}://HOST:PORT (1..65535)")
    if not parts.hostname and not (parts.scheme in ("udp", "srt") and parts.netloc.startswith(("@", ":"))):
        raise UsageError(f"--source {source}: no host; expected {parts.scheme}://HOST[:PORT]/...")
