#!/usr/bin/env python3
"""vad command line: ``python run_pipeline.py --help`` (the same as the installed ``vad`` command)."""

import sys

from vad.cli import main

if __name__ == "__main__":
    sys.exit(main())
