"""docs/export.png: an exported page opened from disk with the network off, text generated,
one character's candidates shown.

    python generate.py mode=export ckpt_path=outputs/<date>/<time> output=/tmp/romeo.html
    python -m tests.export.shot /tmp/romeo.html docs/export.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from charrnn.bench.export import CHROMIUM_ARGS, chromium


def screenshot(page_path: Path, out: Path, prompt: str = "ROMEO:", length: int = 500) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        context = browser.new_context(offline=True, viewport={"width": 1280, "height": 820})
        page = context.new_page()
        page.goto(page_path.resolve().as_uri())
        page.fill("#prompt", prompt)
        page.locator("#temperature").fill("0.8")
        page.fill("#length", str(length))
        page.click("#generate")
        expect(page.locator("#generate")).to_be_enabled(timeout=60_000)
        chars = page.locator("#out span.c")
        letter = next(i for i in range(120, chars.count()) if chars.nth(i).inner_text().isalpha())
        chars.nth(letter).click()  # pinned: its candidates stay in the panel
        page.screenshot(path=str(out))
        browser.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    screenshot(args.page, args.out)
