"""One camera's options, in one place: how its source is read and what evidence it keeps.

:class:`CameraOptions` is their one schema: ``vad watch``'s flags (:func:`flag`), :class:`vad.live.watch.WatchOptions`
(plus what only the watch loop has) and a site file's camera keys (:class:`vad.site.config.CameraConfig`, plus the
camera's source, run and retention). Every value is checked as a config's (:mod:`vad.config`): a bad one is one
:class:`~vad.errors.ConfigError` that names it and says what was expected, the same words from a flag
(``--fps: got -1.0; ...``) and from a site file (``cameras.gate.fps: got -1.0; ...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

from vad.config import Positive, Range, check_field

Seconds = Annotated[float, Range(ge=0)]
Timeout = Annotated[float, Range(gt=0)]


def option(default, help: str, **meta):
    """An options field: ``help`` as ``vad watch --help`` says it (for a switch that is on by default, what turning
    it off drops: its flag says "no ..."); ``meta``: ``cli=False`` (not a flag of ``vad watch``), ``flag`` (the
    flag's name when it is not ``--field-name``)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class CameraOptions:
    """How one camera is watched, whoever watches it (``vad watch``, or a camera of ``vad serve``'s site file)."""

    fps: Annotated[float, Range(gt=0)] | None = option(
        None, "score at this rate instead of the training footage's (cheaper; the motion branch then sees other "
              "speeds: a warning says so)")
    transport: Literal["tcp", "udp"] = option("tcp", "rtsp transport (default tcp)")
    listen: bool = option(False, "rtsp://: wait for a publisher to push to the URL")
    realtime: bool = option(False, "read a file at its own frame rate (as a camera sends it)")
    open_timeout: Timeout = option(10.0, "seconds to wait when opening (default 10)")
    stall_timeout: Timeout = option(5.0, "seconds without a frame before the source is reopened (default 5)")
    max_retries: Annotated[int, Range(ge=0)] | None = option(None, "reopen attempts before giving up (default: "
                                                                   "forever)")
    queue_size: Positive = option(16, "frames waiting at most; the stalest are dropped beyond", flag="--queue")
    pre_roll: Seconds = option(3.0, "seconds before an event in its clip (default 3)")
    post_roll: Seconds = option(3.0, "seconds after it (default 3)")
    snapshots: bool = option(True, "JPEG snapshot of each event's peak frame (OUT/snapshots/)")
    clips: bool = option(True, "annotated clip of each event with pre- and post-roll (OUT/clips/)")

    def __post_init__(self) -> None:
        for name in OPTION_NAMES:  # checked, and converted as a config's values are (an int fps becomes a float)
            object.__setattr__(self, name, check_field(CameraOptions, name, getattr(self, name), name))


OPTION_NAMES = tuple(f.name for f in fields(CameraOptions))
# The options a vad.live.sources.Source takes, as keywords of the same names.
SOURCE_OPTIONS = ("queue_size", "realtime", "transport", "listen", "open_timeout", "stall_timeout", "max_retries")


def flag(f) -> str:
    """The ``vad watch`` flag of options field ``f``: ``--field-name`` (``--no-field-name`` for a switch that is on
    by default) unless its metadata names one."""
    dashed = f.name.replace("_", "-")
    return f.metadata.get("flag", f"--no-{dashed}" if f.default is True else f"--{dashed}")


def from_flags(values: dict[str, Any]) -> dict[str, Any]:
    """The :class:`CameraOptions` fields among ``values`` (``vad watch``'s flags, by field name) checked, each
    error named by its flag; the other values as they are."""
    by_name = {f.name: f for f in fields(CameraOptions)}
    return {k: check_field(CameraOptions, k, v, flag(by_name[k])) if k in by_name else v for k, v in values.items()}


def flag_fields(options: type) -> list:
    """The fields of options dataclass ``options`` that are ``vad watch`` flags (``metadata["cli"]``, default true;
    ``out`` and the fields a program sets say false)."""
    return [f for f in fields(options) if f.metadata.get("cli", True)]
