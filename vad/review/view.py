"""What the review page reads of a scored run (the page and its thumbnails share it)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vad.runs import ClipRecord, RunFolder
from vad.runtime.reference import NormalReference


class ScoredRunView(Protocol):
    """What the page reads of a scored run: a :class:`vad.offline.evaluate.ScoredRun` (not imported here: the evaluate
    stage imports this package)."""

    folder: RunFolder
    manifest: dict[str, ClipRecord]
    labels: dict[str, np.ndarray]
    thresholds: dict[str, float]
    normalisation: str

    def shown(self, clip: str) -> tuple[np.ndarray, float]: ...

    def fps(self, clip: str, default: float | None = None) -> float | None: ...

    def reference(self, clip: str) -> NormalReference: ...
