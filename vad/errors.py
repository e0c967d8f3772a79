"""Exceptions for bad input. Each message names the offending file or value and what was expected."""

from __future__ import annotations


class VadError(Exception):
    """Base class for errors the CLI reports as a one-line message (no traceback)."""


class DatasetLayoutError(VadError, ValueError):
    """A dataset root is missing or its folder tree is not the one the reader expects."""


class LabelError(VadError, ValueError):
    """Labels that do not fit their clip (wrong length, unreadable label file)."""


class DecodeError(VadError, RuntimeError):
    """A video or image that cannot be decoded (not a video, empty, truncated, corrupt)."""


class ConfigError(VadError, ValueError):
    """A setting that is unknown, malformed, out of range, or not one the command can apply."""


class UsageError(VadError, ValueError):
    """A command asked for something it cannot do (arguments that do not fit together, nothing to work on)."""


class InputError(VadError, ValueError):
    """Input data (scores, labels, footage) that cannot give the result asked for."""


class UnknownEventError(UsageError):
    """An event id that is not among the run's events (``RUN/events.json``)."""
