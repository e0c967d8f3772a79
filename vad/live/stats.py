"""What a live watch counts: frames scored, their rates and latency, gaps; the ``status`` line and the terminal's
status text."""

from __future__ import annotations

import resource
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vad.live import iso
from vad.live.sources import Frame


class WatchStats:
    """The counts of one watch of ``source``; rates over the last ``status_every`` seconds (status lines) or 5 s
    (the terminal); latency over the last 2000 frames."""

    def __init__(self, source: str, status_every: float) -> None:
        self.source, self.status_every = source, status_every
        self.scored = 0
        self.gaps = 0
        self.received_t: deque[float] = deque(maxlen=2000)  # time.monotonic() when frames scored were decoded
        self.scored_t: deque[float] = deque(maxlen=2000)  # ... when they were scored
        self.latency: deque[float] = deque(maxlen=2000)  # seconds, decoded -> scored

    def add(self, frames: Sequence[Frame], now: float) -> None:
        """``frames`` were scored at ``now`` (``time.monotonic()``)."""
        for f in frames:
            self.scored += 1
            self.received_t.append(f.received)
            self.scored_t.append(now)
            self.latency.append(now - f.received)

    def status(self, elapsed: float, *, decoded: int, dropped: int, open_event: str | None, evidence_dropped: int,
               sink_failed: int) -> dict:
        """The ``status`` line, ``elapsed`` seconds into the watch (the counts of the source, the open event, the
        evidence and the sinks as given)."""
        lat = np.asarray(self.latency) * 1000
        span = min(self.status_every, max(elapsed, 1e-3))
        window = [t for t in self.scored_t if t >= time.monotonic() - span]
        return {"type": "status", "source": self.source, "wall_time": iso(time.time()), "seconds": round(elapsed, 1),
                "frames_decoded": decoded, "frames_scored": self.scored, "dropped": dropped,
                "fps_in": round(_rate(self.received_t), 2), "fps_scored": round(len(window) / span, 2),
                "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
                "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
                "open_event": open_event, "gaps": self.gaps, "evidence_dropped": evidence_dropped,
                "webhook_failed": sink_failed, "rss_mb": rss_mb(),
                "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}

    def text(self, *, dropped: int, open_event: str | None) -> str:
        """One line for a terminal: rates in and scored, drops, latency, the open event."""
        lat = np.asarray(self.latency) * 1000
        p = (f"{np.percentile(lat, 50):.0f}/{np.percentile(lat, 95):.0f} ms") if len(lat) else "-"
        return (f"{self.source}: in {_rate(self.received_t):.1f} fps, scored {_rate(self.scored_t):.1f} fps, "
                f"dropped {dropped}, latency p50/p95 {p}, event {open_event or '-'}   ")


def _rate(times: deque[float]) -> float:
    """Events per second over the last 5 s of ``times`` (``time.monotonic()``)."""
    recent = [t for t in times if t >= time.monotonic() - 5]
    return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0


def rss_mb() -> float | None:
    """The process's resident memory now (Linux), in MiB; None elsewhere."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None
