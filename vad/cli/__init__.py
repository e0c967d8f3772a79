"""Command-line interface (``vad`` / ``python run_pipeline.py``): :func:`main` runs one command, parsed by
:mod:`vad.cli.parser` and carried out by :mod:`vad.cli.commands`, with the console's log handler; bad input ends in
one ``error:`` line. The CLI alone prints (the library logs)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from vad.cli.commands import pipeline_config
from vad.cli.parser import build_parser
from vad.errors import UsageError, VadError

__all__ = ["ConsoleHandler", "build_parser", "console_logging", "main"]


@contextmanager
def _writing(args: argparse.Namespace) -> Iterator[None]:
    """Hold the lock of the run folder the command writes (``--out`` or ``--run``); under torchrun rank 0's."""
    from vad.distributed import world
    from vad.runs import writing

    folder = getattr(args, args.writes) if getattr(args, "writes", None) else None
    if folder is None or not world().main:
        yield
        return
    if args.writes == "out" and getattr(args, "run", None) is None:  # a new run's settings, before its folder
        pipeline_config(args)
    with writing(folder, args.command, existing=args.writes == "run"):
        yield


class ConsoleHandler(logging.Handler):
    """vad's log records as the CLI shows them: the message alone, information on standard output, notes and
    warnings on standard error (the streams looked up at each record, so a redirected stream is honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()  # line by line, also off a terminal (a service's log, a pipe)
        except Exception:
            self.handleError(record)


def console_logging(verbosity: int = 0) -> None:
    """Show vad's log on the console: ``verbosity`` -1 (``-q``) warnings only, 0 what a user is told, 1 (``-v``) with
    debug records named by their module. Idempotent: one console handler whatever the calls."""
    logger = logging.getLogger("vad")
    handler = next((h for h in logger.handlers if isinstance(h, ConsoleHandler)), None)
    if handler is None:
        handler = ConsoleHandler()
        logger.addHandler(handler)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s" if verbosity > 0 else "%(message)s"))
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    logger.propagate = False


DISTRIBUTED = ("train", "score", "run")  # the commands that use every process of a torchrun launch


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input (vad's own errors, files that cannot be read or written) ends with one
    ``error:`` line and exit code 2. Anything else is a bug and keeps its traceback (``--debug``: every error)."""
    from vad import distributed

    args = build_parser().parse_args(argv)
    console_logging(max(-1, min(1, args.verbose - args.quiet)))
    try:
        if distributed.launched():
            if args.command not in DISTRIBUTED:
                raise UsageError(f"'{args.command}' runs in one process; under torchrun use one of {DISTRIBUTED}")
            _, args.device = distributed.setup(args.device)
        with _writing(args):
            args.func(args)
    except VadError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unwritable or unreadable file or folder: name it
        if args.debug:
            raise
        name = err.filename2 or err.filename  # a rename names its target second
        where = f"{name}: " if name and str(name) not in str(err.strerror or err) else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()
    return 0
