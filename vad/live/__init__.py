"""The parts of a live watch (:class:`vad.live.watch.Watch` is the loop that wires them):

- :mod:`vad.live.events`: :class:`~vad.live.events.EventTracker`, the live rule's changes as ``start`` /
  ``update`` / ``end`` lines (peak, box, branch), and the ``gap`` line;
- :mod:`vad.live.sinks`: where lines go, each a callable taking the line dict (``events.jsonl``, stdout, a webhook);
- :mod:`vad.live.evidence`: snapshots and clips, written off the loop by one thread;
- :mod:`vad.live.stats`: frames scored, rates, latency, gaps: the ``status`` line and the terminal's status text.

Nothing here imports the offline stages (score, evaluate, render): drawing comes from :mod:`vad.heatmap`, encoding
from :mod:`vad.io.encode`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from datetime import datetime, timezone


def iso(t: float) -> str:
    """``t`` (seconds since the epoch) as an ISO 8601 UTC time to the millisecond, ``...Z``."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def lower_priority() -> None:
    """Lower the calling thread's priority (Linux: nice applies per thread): evidence and webhooks wait for the cores
    while frames are scored, and catch up between them."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: the loop's priority then
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
