"""The page in a real browser: Debian's headless Chromium driven by Playwright.

Used by test_browser.py, and to make docs/serve.png from a trained run:

    python -m tests.serve.browser outputs/<date>/<time> docs/serve.png --memory docs/memory.png \
        --tree docs/tree.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from charrnn.bench.export import CHROMIUM_ARGS, chromium

__all__ = ["CHROMIUM_ARGS", "chromium", "tour"]


def tour(url: str, screenshot: Path, prompt: str = "ROMEO:", length: int = 400,
         memory_shot: Path | None = None) -> dict:
    """Everything a person does on the page, checked as it goes; what it read there."""
    from playwright.sync_api import expect, sync_playwright

    seen: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        expect(page.locator("#run option")).not_to_have_count(0)
        seen["runs"] = page.locator("#run option").all_inner_texts()

        # Generate: a prompt, a temperature, and the text streams in.
        page.fill("#prompt", prompt)
        page.locator("#temperature").fill("0.8")
        expect(page.locator("#temperature-value")).to_have_text("0.80")
        page.fill("#length", str(length))
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('#out span.c').length >= 200")
        expect(page.locator("#generate")).to_be_enabled(timeout=60_000)
        chars = page.locator("#out span.c")
        seen["generated"] = chars.count()
        seen["text"] = page.locator("#out").inner_text()
        # Every character is shaded by its probability; pointing at one explains it.
        seen["shaded"] = page.eval_on_selector_all(
            "#out span.c", "spans => spans.every(s => s.style.background !== '')")
        chars.nth(50).hover()
        seen["choosing"] = float(page.locator("#info .choosing").inner_text())
        seen["candidates"] = page.locator("#info table.candidates tr").count()
        page.screenshot(path=str(screenshot))

        # Side by side: the same prompt and seed at T = 0.5, 1.0 and 1.5, streamed together.
        page.click("#tabs button[data-view=compare]")
        page.fill("#c-prompt", prompt)
        page.fill("#c-length", "150")
        page.click("#c-generate")
        page.wait_for_function(
            "[...document.querySelectorAll('.text.compare')]"
            ".every(c => c.querySelectorAll('span.c').length >= 150)")
        seen["compared"] = page.locator(".text.compare").all_inner_texts()

        # Score: a pasted text, its perplexity, each character shaded by its surprisal.
        page.click("#tabs button[data-view=score]")
        page.fill("#s-text", seen["text"][:200])
        page.click("#score")
        expect(page.locator("#s-ppl")).to_be_visible()
        seen["score_ppl"] = float(page.locator("#s-ppl").inner_text())
        seen["scored_chars"] = page.locator("#s-out span.c").count()

        # Memory: a suggested unit, and the text shaded by it as it is read and written.
        page.click("#tabs button[data-view=memory]")
        expect(page.locator("#m-suggest option")).not_to_have_count(1)
        seen["suggested"] = page.locator("#m-suggest option").all_inner_texts()[1:]
        page.select_option("#m-suggest", index=1)
        page.fill("#m-prompt", prompt)
        page.fill("#m-length", "200")
        page.click("#m-generate")
        page.wait_for_function("document.querySelectorAll('#m-out span[data-a]').length >= 150")
        seen["watched"] = page.locator("#m-out span[data-a]").count()

        # vs counting: the n-gram's surprisal against the model's, character by character.
        page.click("#tabs button[data-view=versus]")
        page.fill("#v-text", seen["text"][:200])
        page.click("#v-compare")
        expect(page.locator("#v-ngram")).to_be_visible(timeout=60_000)
        seen["versus"] = (float(page.locator("#v-model").inner_text()),
                          float(page.locator("#v-ngram").inner_text()))

        # Characters: each one where its learned vector put it; pointing shows its nearest.
        page.click("#tabs button[data-view=characters]")
        expect(page.locator("#ch-separation")).to_be_visible(timeout=60_000)
        seen["characters"] = page.locator("#ch-plot text").count()
        page.locator("#ch-plot text").nth(3).hover()
        seen["nearest"] = page.locator("#ch-info table.candidates tr").count()
        seen["underlined"] = page.locator("#ch-plot text.near").count()
        if memory_shot is not None:
            page.click("#tabs button[data-view=memory]")
            page.screenshot(path=str(memory_shot))
        seen["page_errors"] = errors
        browser.close()
    return seen


def tree_shot(url: str, screenshot: Path, prompt: str = "ROMEO:", forks=(60, 140, 220)) -> None:
    """The Generate view with a few branches: the first text, then a fork at each of `forks`
    (a generated letter's first other candidate), each from the branch before it."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 980})
        page.goto(url)
        expect(page.locator("#run option")).not_to_have_count(0)
        page.fill("#prompt", prompt)
        page.locator("#temperature").fill("0.8")
        page.fill("#length", "400")
        page.click("#generate")
        expect(page.locator("#generate")).to_be_enabled(timeout=60_000)
        for at in forks:
            chars = page.locator("#out span.c")
            letter = next(i for i in range(at, chars.count())
                          if chars.nth(i).inner_text().isalpha())
            chars.nth(letter).click()
            page.locator("#info tr.pick").first.click()
            expect(page.locator("#generate")).to_be_enabled(timeout=60_000)
        chars = page.locator("#out span.c")
        chars.nth(forks[-1] + 8).click()  # a character's panel, pinned, with its candidates
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()


def main(argv: list[str] | None = None) -> None:
    from charrnn.bench.serving import ServerProcess

    parser = argparse.ArgumentParser(description="Screenshot the generation page of a run.")
    parser.add_argument("run", type=Path, help="a run folder or .ckpt")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--memory", type=Path, help="also a PNG of the memory view")
    parser.add_argument("--tree", type=Path, help="also a PNG of a tree of forks")
    args = parser.parse_args(argv)
    with ServerProcess(args.run.resolve(), Path.cwd()) as server:
        seen = tour(server.url, args.out, prompt=args.prompt, memory_shot=args.memory)
        if args.tree is not None:
            tree_shot(server.url, args.tree, prompt=args.prompt)
    print({k: v for k, v in seen.items() if k not in ("text", "compared")}, file=sys.stderr)


if __name__ == "__main__":
    main()
