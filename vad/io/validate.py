from __future__ import annotations

from pathlib import Path

from vad.errors import DatasetLayoutError


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise naming it and what it should have been."""
    if not path.exists():
        raise DatasetLayoutError(f"{path}: {what} not found (is the dataset root right?)")
    if not path.is_dir():
        raise DatasetLayoutError(f"{path}: {what} is not a folder")
    return path
