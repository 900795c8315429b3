"""The Generate view's tree in Debian's headless Chromium: forks, going back, a link that
replays the same text and tree, downloads, and links that name what does not exist."""

import json
import urllib.parse

import pytest

from charrnn.bench.serving import ServerProcess
from tests.serve.browser import CHROMIUM_ARGS, chromium

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    chromium() is None,
    reason="Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")]
PROMPT = "to be"


def idle(page):
    from playwright.sync_api import expect

    expect(page.locator("#generate")).to_be_enabled(timeout=60_000)


def fork(page, at: int, keyboard: bool = False) -> str:
    """Pin generated character `at` (0 = the first generated) and fork with its first other
    candidate; the candidate."""
    page.locator("#out span.c").nth(at).click()
    row = page.locator("#info tr.pick").first
    candidate = urllib.parse.unquote(row.get_attribute("data-char"))
    if keyboard:
        row.focus()
        page.keyboard.press("Enter")
    else:
        row.click()
    idle(page)
    return candidate


def branches(page) -> dict[str, str]:
    """{label: text} of every branch, each shown in turn by its button."""
    found = {}
    for i in range(page.locator("#branch-list button").count()):
        button = page.locator("#branch-list button").nth(i)
        button.click()
        found[button.inner_text()] = page.locator("#out").inner_text()
    return found


def test_forks_make_a_tree_that_a_copied_link_replays(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    root, run = served
    with ServerProcess(run, root) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(server.url)
        expect(page.locator("#run option")).not_to_have_count(0)
        page.fill("#prompt", PROMPT)
        page.locator("#temperature").fill("0.9")
        page.fill("#length", "200")
        page.click("#generate")
        idle(page)
        first = page.locator("#out").inner_text()
        assert len(first) == len(PROMPT) + 200

        candidate = fork(page, 30)
        second = page.locator("#out").inner_text()
        assert second.startswith(first[: len(PROMPT) + 30] + candidate)
        assert len(second) == len(first) and page.locator("#out .fork-point").count() == 1
        label = page.locator("#branch-list button.current").inner_text()
        assert label.startswith(f"#1 from #0 at {len(PROMPT) + 30}: ") and label.endswith("%)")
        page.locator("#branch-list button").first.click()  # back to the first text: unchanged
        assert page.locator("#out").inner_text() == first
        assert page.locator("#out .forked").count() == 1  # where #1 leaves it
        page.locator("#branch-list button").nth(1).click()
        fork(page, 120, keyboard=True)  # a fork of the fork, by keyboard
        assert page.locator("#breadcrumb button").count() == 3
        assert page.locator("#out .fork-point").count() == 2  # its fork and its parent's
        tree = branches(page)
        assert len(tree) == 3 and list(tree.values())[:2] == [first, second]

        with page.expect_download() as download:
            page.click("#download-tree")
        saved = json.loads(open(download.value.path(), encoding="utf-8").read())
        assert [b["text"] for b in saved["branches"]] == list(tree.values())
        assert saved["branches"][2]["parent"] == 1
        assert 0 < saved["branches"][1]["fork_probability"] < 1
        with page.expect_download() as download:
            page.click("#download-text")
        assert download.value.suggested_filename == "branch-2.txt"

        link = page.locator("#link").input_value()
        again = browser.new_page(viewport={"width": 1280, "height": 900})
        again.goto(link)
        expect(again.locator("#branch-list button")).to_have_count(3, timeout=60_000)
        idle(again)
        assert branches(again) == tree  # the same text and tree, forks included

        # A link naming a run this server does not serve, or a fork that does not exist: one
        # line on the page, which keeps what it shows.
        spec = json.loads(urllib.parse.unquote(link.split("#", 1)[1]))
        for bad, says in (({**spec, "run": "outputs/nope"}, "no run 'outputs/nope' here"),
                          ({**spec, "forks": [[0, 9999, "a", spec["settings"]]]},
                           "no generated character 9999 in branch #0")):
            again.goto(link.split("#")[0] + "#" + urllib.parse.quote(json.dumps(bad)))
            expect(again.locator("#error")).to_contain_text(says, timeout=60_000)
            assert "\n" not in again.locator("#error").inner_text()
            idle(again)
            if "nope" in says:  # the page as it was
                assert branches(again) == tree
            else:  # the link's first text, and the fork refused
                assert again.locator("#out").inner_text() == first
                assert again.locator("#branch-list button").count() == 1
        # Mixed with counting: each candidate's parts on hover.
        again.check("#mix")
        again.click("#generate")
        idle(again)
        again.locator("#out span.c").nth(10).click()
        expect(again.locator("#info .parts")).to_contain_text("counting alone")
        assert "counting alone" in again.locator("#info table.candidates tr").first.get_attribute(
            "title")
        assert json.loads(urllib.parse.unquote(again.url.split("#", 1)[1]))["settings"]["mix"] \
            == "ngram"
        assert errors == []
        browser.close()
