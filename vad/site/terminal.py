"""The site loop's turn for its cameras: states refreshed, ``status`` lines every ``status_every`` seconds, and on
a terminal one line per camera redrawn in place."""

from __future__ import annotations

import sys
import time

from vad.live.camera import Camera


class StatusBoard:
    """See the module docstring; ``every``: seconds between status lines."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.terminal = sys.stderr.isatty()
        self.next = time.monotonic() + every

    def turn(self, cams: list[Camera]) -> None:
        for c in cams:
            c.refresh_state()
        if time.monotonic() >= self.next:
            self.next = time.monotonic() + self.every
            for c in cams:
                c.status()
        if self.terminal and cams:
            sys.stderr.write("".join(f"\r\x1b[K{c.status_text()}\n" for c in cams) + f"\x1b[{len(cams)}A")
            sys.stderr.flush()

    def close(self, cameras: int) -> None:
        """Leave the cursor below the ``cameras`` lines drawn."""
        if self.terminal:
            sys.stderr.write("\n" * cameras)
