"""``events.jsonl``'s one owner (:func:`event_log`: one :class:`EventLog` per file in this process): a camera
appends its lines through it (its file sink), the site reads, asks and rewrites (retention) through it.

The lines are indexed in memory: a read parses only the bytes appended since the last one (by this process or
another: the file's size, inode and mtime say), so a page asking every second does not re-parse the file. A torn
last line (a writer killed mid-line) waits until its newline comes; a line that is not JSON is skipped.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from vad.atomic import write_text

EVENT_LINES = ("start", "update", "end", "gap")  # the lines indexed (status lines are not read back)


class EventLog:
    """One ``events.jsonl``; safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.parsed = 0  # lines parsed so far (a second read of an unchanged file parses none)
        self._lock = threading.Lock()
        self._file = None  # the append handle, opened at the first append
        self._reset()

    def _reset(self) -> None:
        self._lines: list[dict] = []
        self._events: set[str] = set()
        self._offset = 0  # bytes of the file indexed
        self._stamp: tuple[int, int, int] | None = None  # (device, inode, mtime_ns) when indexed

    def append(self, line: dict) -> None:
        """Write ``line`` (one JSON line, flushed; the folder made at the first). Readers index it at their next look
        (from the file, so a caller's later change to ``line`` never reaches the index)."""
        data = json.dumps(line) + "\n"
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", buffering=1)  # line-buffered: each line reaches the file whole
            self._file.write(data)

    __call__ = append  # a sink (vad.live.sinks)

    def close(self) -> None:
        """Close the append handle (a later append opens it again, in the file then at ``path``); the index stays."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def rewrite(self, keep: Callable[[dict], bool]) -> int:
        """Keep the JSON lines for which ``keep`` is true (lines that are not JSON objects are kept), replacing the
        file atomically and indexing what stays in the same pass; appends go on in the new file. The caller holds the
        writers' lock. Returns the lines removed."""
        with self._lock:
            if not self.path.is_file():
                return 0
            kept, taken, removed = [], [], 0
            for text in self.path.read_text().splitlines():
                try:
                    line = json.loads(text)
                except ValueError:
                    kept.append(text)
                    continue
                if not isinstance(line, dict) or keep(line):
                    kept.append(text)
                    taken += [line] if isinstance(line, dict) else []
                else:
                    removed += 1
            if removed:
                data = "".join(t + "\n" for t in kept)
                write_text(data, self.path)
                self._close()
                self._reset()
                for line in taken:
                    self._take(line)
                st = self.path.stat()
                self._offset, self._stamp = len(data.encode()), (st.st_dev, st.st_ino, st.st_mtime_ns)
            return removed

    def lines(self, since: str | None = None) -> list[dict]:
        """The event and gap lines (``start``, ``update``, ``end``, ``gap``) in the order written, those whose
        ``wall_time`` is at or after ``since`` (ISO time compared as text: the lines' times are UTC with a ``Z``)."""
        with self._lock:
            self._refresh()
            lines = list(self._lines)
        return lines if since is None else [x for x in lines if x.get("wall_time", "") >= since]

    def has(self, event: str) -> bool:
        """Whether a line names ``event``."""
        with self._lock:
            self._refresh()
            return event in self._events

    def _refresh(self) -> None:
        """Index what was appended since the last look; everything again when the file was replaced or shrank."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._reset()
            return
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if self._stamp is not None and (stamp[:2] != self._stamp[:2] or st.st_size < self._offset or (
                st.st_size == self._offset and stamp != self._stamp)):  # replaced, cut, or edited in place
            self._reset()
        if st.st_size == self._offset:
            self._stamp = stamp
            return
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read(st.st_size - self._offset)
        whole = data[: data.rfind(b"\n") + 1]  # a torn last line waits for its newline
        for text in whole.decode(errors="replace").splitlines():
            self.parsed += 1
            try:
                line = json.loads(text)
            except ValueError:
                continue
            if isinstance(line, dict):
                self._take(line)
        self._offset += len(whole)
        self._stamp = stamp

    def _take(self, line: dict) -> None:
        if isinstance(line.get("event"), str):
            self._events.add(line["event"])
        if line.get("type") in EVENT_LINES:
            self._lines.append(line)


_logs: dict[Path, EventLog] = {}
_logs_lock = threading.Lock()


def event_log(path: Path | str) -> EventLog:
    """The :class:`EventLog` of the file at ``path`` (its writer and its readers share the index)."""
    key = Path(path).absolute()
    with _logs_lock:
        if key not in _logs:
            _logs[key] = EventLog(key)
        return _logs[key]
