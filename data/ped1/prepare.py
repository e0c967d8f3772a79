#!/usr/bin/env python3
"""Check a downloaded ped1 tree (see README.md beside this file) with the project's reader."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _check import check  # noqa: E402

if __name__ == "__main__":
    check("ped1", __doc__)
