"""The exported page in Debian's headless Chromium, opened from disk with the network off:
its numbers against torch, and everything a person does on it."""

import math

import pytest
import torch

from charrnn.export.run import export_run
from charrnn.generation.loading import load_model
from charrnn.generation.sampling import sample_text, score_text
from tests.conftest import make_corpus
from tests.serve.browser import CHROMIUM_ARGS, chromium

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    chromium() is None,
    reason="Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")]
PPL_TOLERANCE = 1e-4  # relative: float32 weights, sums in doubles (JavaScript) or float32 (torch)
TIE = 1e-4  # greedy texts may part only where the two best logits were this close


@pytest.fixture(scope="module")
def browser():
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def offline_page(browser, path):
    """The file opened with the network off and every request but the file's own refused;
    the page, the requests it made and its errors."""
    context = browser.new_context(offline=True, viewport={"width": 1280, "height": 860})
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
        "file://") else route.abort())
    page = context.new_page()
    requests, errors = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.goto(path.as_uri())
    return page, requests, errors


def parted_at_a_tie(model, vocab, prompt: str, ours: str, theirs: str) -> bool:
    """Where two greedy texts first differ, whether torch's two best logits were within TIE."""
    at = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    with torch.no_grad():
        logits, _ = model(vocab.encode(ours[:at]).long()[None])
    best = logits[0, -1].topk(2).values
    return at > len(prompt) and float(best[0] - best[1]) < TIE


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_page_scores_and_writes_as_torch_does(runs, browser, tmp_path, cell):
    ckpt = runs[cell] / "checkpoints" / "best.ckpt"
    path = export_run(ckpt, "html", tmp_path / f"{cell}.html")
    model, vocab = load_model(ckpt)
    text = make_corpus(tmp_path / "other.txt", seed=1).read_text()[:2000]
    page, requests, errors = offline_page(browser, path)
    scored = page.evaluate("(text) => window.charrnn.score(text)", text)
    expected = score_text(model, vocab, text)
    assert scored["ppl"] == pytest.approx(expected["ppl"], rel=PPL_TOLERANCE)
    assert len(scored["bits"]) == expected["characters_scored"] == 1999
    assert sum(scored["bits"]) * math.log(2) / 1999 == pytest.approx(expected["loss"], rel=1e-4)

    prompt = "to be"
    greedy = page.evaluate("(prompt) => window.charrnn.generate({prompt, temperature: 0, "
                           "length: 400})", prompt)
    torch_greedy = prompt + sample_text(model, vocab, prompt, length=400, temperature=0)[0]
    assert greedy == torch_greedy or parted_at_a_tie(model, vocab, prompt, greedy, torch_greedy)

    settings = "{prompt: 'to be', temperature: 0.8, top_k: 5, length: 300, seed: 7}"
    first, again, other = page.evaluate(f"""async () => [
        await window.charrnn.generate({settings}), await window.charrnn.generate({settings}),
        await window.charrnn.generate({{...{settings}, seed: 8}})]""")
    assert first == again != other and len(first) == len(prompt) + 300
    assert errors == [] and requests == [path.as_uri()]


def test_a_person_generates_stops_and_scores_on_the_page_offline(runs, browser, tmp_path):
    from playwright.sync_api import expect

    path = export_run(runs["lstm"] / "checkpoints" / "best.ckpt", "html", tmp_path / "m.html")
    page, requests, errors = offline_page(browser, path)
    card = page.locator("#card").inner_text()
    assert card.startswith("lstm 16×2, one-hot") and "corpus corpus.txt" in card
    assert "validation perplexity" in card and "test" in card

    page.fill("#prompt", "to be")
    page.locator("#temperature").fill("0.8")
    page.fill("#top_k", "10")
    page.fill("#length", "300")
    page.click("#generate")
    expect(page.locator("#generate")).to_be_enabled(timeout=60_000)
    chars = page.locator("#out span.c")
    assert chars.count() == 300
    text = page.locator("#out").inner_text()
    assert text == page.evaluate("() => window.charrnn.generate({prompt: 'to be', "
                                 "temperature: 0.8, top_k: 10, length: 300, seed: 1234})")
    chars.nth(40).hover()  # what the model chose between, as the served page shows it
    assert float(page.locator("#info .choosing").inner_text()) >= 1
    assert 1 <= page.locator("#info table.candidates tr").count() <= 5
    assert page.locator("#speed").inner_text().startswith("300 characters in")

    page.fill("#length", "2000000")  # long enough to be stopped while it streams
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#out span.c').length > 50")
    page.click("#stop")
    expect(page.locator("#generate")).to_be_enabled()
    stopped = chars.count()
    page.wait_for_timeout(300)
    assert 50 < stopped == chars.count() < 2_000_000

    page.fill("#prompt", "to be#")  # "#" is not in the vocabulary: said, nothing generated
    page.click("#generate")
    expect(page.locator("#error")).to_contain_text("not in the vocabulary")

    page.click("#tabs button[data-view=score]")
    page.fill("#s-text", text)
    page.click("#score")
    expect(page.locator("#s-ppl")).to_be_visible()
    model, vocab = load_model(runs["lstm"] / "checkpoints" / "best.ckpt")
    expected = score_text(model, vocab, text)["ppl"]
    assert float(page.locator("#s-ppl").inner_text()) == pytest.approx(expected, abs=5e-5)
    assert page.locator("#s-out span.c").count() == len(text) - 1
    assert errors == [] and requests == [path.as_uri()]
