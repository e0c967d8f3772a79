"""One encoding class for every video written: :class:`VideoWriter` (H.264 MP4 through PyAV / libx264).

The rendered videos (:mod:`vad.offline.render`) and the live watch's event clips (:mod:`vad.live.evidence`) both write
through it.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


class VideoWriter:
    """H.264 MP4 writer (PyAV / libx264, yuv420p) that takes RGB frames ``(H, W, 3)`` uint8 one at a time."""

    def __init__(self, path: Path, width: int, height: int, fps: float, crf: int = 23, preset: str = "veryfast"):
        import av

        if width % 2 or height % 2:
            raise ValueError(f"H.264 (yuv420p) needs even frame sizes; got {width}x{height}")
        self.container = av.open(str(path), mode="w", format="mp4")
        try:
            self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
            self.stream.options = {"crf": str(crf), "preset": preset}
        except Exception:
            self.container.close()
            raise

    def write(self, rgb: np.ndarray) -> None:
        import av

        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            self.container.mux(packet)

    def close(self, flush: bool = True) -> None:
        """Flush the encoder (unless ``flush`` is false: after an error) and close the file."""
        try:
            if flush:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
