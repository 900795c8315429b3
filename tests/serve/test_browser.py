"""The page in Debian's headless Chromium, against `python generate.py mode=serve`."""

import pytest

from charrnn.bench.serving import ServerProcess
from tests.serve.browser import chromium, tour


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run "
                    "installs it: apt-get install chromium)")
def test_a_person_generates_compares_and_scores_in_a_real_browser(served, tmp_path):
    from charrnn.generation.loading import load_model
    from charrnn.generation.sampling import score_text

    root, run = served
    with ServerProcess(run, root) as server:
        seen = tour(server.url, tmp_path / "serve.png", prompt="to be", length=300)
    assert seen["page_errors"] == []
    assert seen["runs"][0].startswith("outputs/2026-01-01/12-00-00 · rnn 16")
    assert seen["generated"] == 300 and seen["text"].startswith("to be") and seen["shaded"]
    assert 1 <= seen["choosing"] and seen["candidates"] >= 1
    assert len(seen["compared"]) == 3 and all(len(t) >= 150 for t in seen["compared"])
    assert len(set(seen["compared"])) == 3  # three temperatures, three texts
    model, vocab = load_model(run / "checkpoints" / "best.ckpt")
    expected = score_text(model, vocab, seen["text"][:200])
    assert seen["score_ppl"] == pytest.approx(expected["ppl"], abs=5e-5)  # shown to 4 places
    assert seen["scored_chars"] == expected["characters_scored"]
    assert (tmp_path / "serve.png").stat().st_size > 20_000
    assert any(s.startswith("line position: h of layer 0") for s in seen["suggested"])
    assert seen["watched"] >= 150 and all(ppl > 1 for ppl in seen["versus"])
    assert seen["characters"] == len(model.head.bias)  # every character of the vocabulary
    assert seen["nearest"] == 5 and seen["underlined"] == 5
