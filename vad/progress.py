"""Progress bars: tqdm's, shown on a terminal while vad's log says what a user is told (not under ``-q``, nor in a
program that has not asked for vad's log), never off a terminal (a pipe, a service's log file)."""

from __future__ import annotations

import logging

from tqdm import tqdm


def progress_bar(*args, progress: bool = True, **kwargs) -> tqdm:
    """A tqdm bar (``args``/``kwargs`` as tqdm's), disabled unless ``progress`` and vad logs at INFO, and on a
    terminal only (tqdm's ``disable=None``)."""
    shown = progress and logging.getLogger("vad").isEnabledFor(logging.INFO)
    return tqdm(*args, disable=None if shown else True, **kwargs)
