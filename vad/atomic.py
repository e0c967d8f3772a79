"""Atomic file writes: write beside the target, then rename, so a crash never leaves half a file."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # a write that found no room
TEMP_PREFIX = ".vad-tmp."  # temporary files start with it (vad.runs.sweep_temporaries deletes stale ones)


@contextmanager
def atomic_path(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (ending in ``suffix``); on success it replaces ``path``. A full
    disk or a file size limit met while writing (an ``OSError`` naming no file: a library's write) is raised again
    naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.stem}.", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    Path(tmp).chmod(0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        Path(tmp).replace(path)
    except OSError as err:
        if err.filename is None and err.errno in NO_ROOM:  # a library's write (disk full, file too large):
            raise OSError(err.errno, err.strerror, str(path)) from err  # name the file it was writing
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(text: str, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npy(array: np.ndarray, path: Path | str) -> None:
    """``np.save`` to a temporary file beside ``path``, then rename."""
    with atomic_path(path, ".npy") as tmp:
        np.save(tmp, array)
