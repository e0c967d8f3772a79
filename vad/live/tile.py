"""What the control room shows of one camera (:mod:`vad.site.http`): its latest scored frame, drawn with its anomaly
map while an event is open, and its recent scores (the highest of each second over the last minute)."""

from __future__ import annotations

import io
import time
from collections import deque

import numpy as np
from PIL import Image

from vad.config import RenderConfig
from vad.heatmap import font, heat_picture, mark_anomaly
from vad.live.events import Scored
from vad.live.sources import Frame

HISTORY = 60  # seconds of scores kept (the highest of each second)


class Tile:
    """A camera's tile, its heatmaps on the model's heat scale ``heat`` ``(low, high)`` with ``render``'s colours."""

    def __init__(self, heat: tuple[float, float], render: RenderConfig) -> None:
        self.heat, self.render = heat, render
        self.latest: Scored | None = None  # the latest scored frame
        self.history: deque[tuple[int, float]] = deque(maxlen=HISTORY)  # (second, its highest score), the last minute

    def add(self, last: Frame, calibrated: np.ndarray, amap: np.ndarray) -> None:
        """A batch scored: ``calibrated`` ``(B,)`` its scores, ``last`` its last frame with its map ``amap``."""
        self.latest = Scored(last, float(calibrated[-1]), amap, None)
        second = int(time.time())
        top = float(np.max(calibrated))
        if self.history and self.history[-1][0] == second:
            top = max(top, self.history.pop()[1])
        self.history.append((second, top))

    def recent(self, seconds: int = HISTORY) -> list[tuple[int, float]]:
        """``(unix second, highest calibrated score in it)`` over the last ``seconds``."""
        since = int(time.time()) - seconds
        return [x for x in list(self.history) if x[0] > since]

    def picture(self, alert: bool, width: int = 640) -> tuple[int, bytes] | None:
        """The latest scored frame as JPEG ``(its seq, bytes)``, at most ``width`` wide, with its anomaly map drawn
        when ``alert`` (an event is open); None before the first."""
        s = self.latest
        if s is None:
            return None
        rgb = s.frame.rgb
        if alert:
            rgb = np.array(heat_picture(rgb, s.amap, self.heat, self.render))
            mark_anomaly(rgb, rgb.shape[0], font(max(12, rgb.shape[0] // 24)))
        img = Image.fromarray(rgb)
        if img.width > width:
            img = img.resize((width, max(2, round(img.height * width / img.width))), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        return s.frame.seq, buf.getvalue()
