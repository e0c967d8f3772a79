"""What a video file holds, read from its container and first frame: frame count, rate, upright size, rotation.

Phone footage stores its frames sideways with a display rotation beside them; players turn them upright, and so
does :func:`vad.io.decode.iter_frames`. :func:`probe` reports the size as shown (after the rotation).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from vad.errors import DecodeError


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int  # as the container declares it (a partly recorded file may decode fewer)
    fps: float
    width: int  # upright (after the rotation)
    height: int
    rotation: int = 0  # degrees counterclockwise that turn a decoded frame upright: 0, 90, 180 or 270


def open_video(path: Path):
    """A PyAV container of ``path`` with at least one video stream; a missing, empty or unreadable file is a
    :class:`DecodeError` naming it."""
    import av

    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"{path}: video file not found")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: file is empty (0 bytes); expected a video file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise DecodeError(f"{path}: cannot be opened as a video ({err}); expected a readable video file") from err
    if not container.streams.video:
        container.close()
        raise DecodeError(f"{path}: has no video stream; expected a video file")
    return container


def frame_rotation(frame) -> int:
    """A decoded PyAV frame's display rotation as a multiple of 90 degrees counterclockwise, in 0..270."""
    return int(round((frame.rotation or 0) / 90)) % 4 * 90


def probe(path: Path | str) -> VideoInfo:
    """Frame count, frame rate, upright size and rotation of a video (its first frame is decoded for the rotation).

    If the header gives no frame count, packets are counted by demuxing, which is still cheap. Results are cached
    per file (path, size and modification time).
    """
    path = Path(path)
    st = path.stat() if path.is_file() else None
    return _probe(path, st.st_size if st else -1, st.st_mtime_ns if st else -1)


@functools.lru_cache(maxsize=4096)
def _probe(path: Path, size: int, mtime_ns: int) -> VideoInfo:
    import av

    with open_video(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        n = int(stream.frames or 0)
        if n <= 0:
            n = sum(1 for p in container.demux(stream) if p.size > 0)
        if n <= 0:
            raise DecodeError(f"{path}: video stream holds no frames; expected at least one")
        w, h = stream.width, stream.height
    with open_video(path) as container:
        try:
            rotation = frame_rotation(next(container.decode(video=0)))
        except (StopIteration, av.error.FFmpegError):
            rotation = 0  # no decodable frame: decoding says so, naming the file
    if rotation in (90, 270):
        w, h = h, w
    return VideoInfo(num_frames=n, fps=fps, width=w, height=h, rotation=rotation)
