"""How numbers read in reports and on pages: percentages, durations, values that may be missing."""

from __future__ import annotations


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal (``0.1234`` -> ``12.3%``); ``n/a`` for ``None``."""
    return "n/a" if x is None else f"{100 * x:.1f}%"


def seconds(x: float) -> str:
    """A duration: ``12.5 s`` under a minute, else ``m:ss.s`` or ``h:mm:ss.s``."""
    if x < 60:
        return f"{x:.1f} s"
    if x < 3600:
        return f"{int(x // 60)}:{x % 60:04.1f}"
    return f"{int(x // 3600)}:{int(x % 3600 // 60):02d}:{x % 60:04.1f}"


def num(x: float | None, fmt: str = ".3f") -> str:
    """``x`` in format ``fmt``; ``n/a`` for ``None``."""
    return "n/a" if x is None else format(x, fmt)
