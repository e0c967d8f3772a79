"""Reading tensor files (checkpoints, weights) without running code from them."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch


def load_weights_only(path: Path, error: type[Exception], what: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU: tensors, numbers, strings and containers of them
    only, so a stranger's file cannot run code. A missing, corrupt or code-carrying file raises ``error`` with one
    line naming ``what`` and the file (PyTorch's own text, which advises ``weights_only=False``, is not passed on:
    that advice is how such a file would run its code)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():  # the unpickler's own warnings about a stranger's file: the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # PyTorch files are zip archives; this is no PyTorch file at all
            raise error(f"{path}: not a readable {what}: not a PyTorch file (corrupt, truncated or another "
                        "format)") from None
        raise error(f"{path}: not a readable {what}: it holds objects other than tensors, numbers and strings, "
                    "which are refused because loading them could run code") from None
    except Exception:  # zip, unpickler and struct errors of a damaged file alike
        raise error(f"{path}: not a readable {what}: the file is corrupt or truncated") from None
