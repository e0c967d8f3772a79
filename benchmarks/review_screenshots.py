#!/usr/bin/env python3
"""Screenshots of a run's review page (RUN/review.html), for the README: the whole page, and the page with the first
event card's video playing.

    python benchmarks/review_screenshots.py --run runs/demo --out docs/img

Needs Playwright for Python (pip install playwright) and Debian's Chromium (apt-get install chromium; Playwright's
own browser download is not used). Writes DIR/review_page.png and DIR/review_playing.png and prints their paths.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]


def screenshots(run: Path, out: Path, width: int = 1440, height: int = 900, seconds: float = 1.5) -> list[Path]:
    """Write the two screenshots of ``run``'s review page into ``out``; return their paths."""
    from playwright.sync_api import sync_playwright

    from vad.runs import RunFolder

    page_path = RunFolder(run).review_page
    if not page_path.is_file():
        raise SystemExit(f"error: {page_path} not found: evaluate the run first (vad evaluate --run {run})")
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"error: {CHROMIUM} not found: apt-get install chromium")
    out.mkdir(parents=True, exist_ok=True)
    full, playing = out / "review_page.png", out / "review_playing.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(page_path.resolve().as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(full), full_page=True)
            cards = page.locator(".card[data-event]")
            if cards.count():
                cards.first.click()
                page.wait_for_function("() => { const v = document.querySelector('video'); "
                                       "return v.readyState >= 2 || document.getElementById('vnote').textContent; }",
                                       timeout=15000)
                page.wait_for_timeout(seconds * 1000)
                page.evaluate("() => document.querySelector('video').pause()")
            page.screenshot(path=str(playing))
        finally:
            browser.close()
    return [full, playing]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="run folder with review.html (vad evaluate)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    parser.add_argument("--width", type=int, default=1440, help="viewport width (default 1440)")
    parser.add_argument("--height", type=int, default=900, help="viewport height (default 900)")
    args = parser.parse_args(argv)
    for path in screenshots(args.run, args.out, args.width, args.height):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
