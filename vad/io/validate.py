from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vad.errors import DatasetLayoutError
from vad.io.records import visible


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise naming it and what it should have been."""
    if not path.exists():
        raise DatasetLayoutError(f"{path}: {what} not found (is the dataset root right?)")
    if not path.is_dir():
        raise DatasetLayoutError(f"{path}: {what} is not a folder")
    return path


def find_dir(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first ``root / candidate`` that is a folder; else an error naming every place looked in.

    When a sub-folder of ``root`` holds one of them, the root is one level too high: the error says so and
    names the folder to pass instead.
    """
    for rel in candidates:
        if (root / rel).is_dir():
            return root / rel
    looked = " and ".join(str(root / rel) for rel in candidates)
    nested = sorted(p for p in visible(root) if p.is_dir() and any((p / rel).is_dir() for rel in candidates))
    if len(nested) == 1:
        hint = f"; {nested[0]} holds it, so {root} looks one level above the dataset root: pass {nested[0]}"
    elif nested:
        hint = (f"; {', '.join(map(str, nested))} hold it, so {root} looks one level above the dataset root: "
                "pass the one you mean")
    else:
        hint = " (is the dataset root right?)"
    raise DatasetLayoutError(f"{what} not found; looked for {looked}{hint}")
