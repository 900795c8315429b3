"""The page's API in-process: streams, the checks of every request, busy, disconnects."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from charrnn.generation.loading import load_model
from charrnn.generation.sampling import score_text
from charrnn.serve.app import STATIC, create_app
from charrnn.serve.models import Models, describe


def client(served, max_streams: int = 4, max_length: int = 300) -> TestClient:
    root, run = served
    models = Models(describe(run / "checkpoints" / "best.ckpt", "outputs/2026-01-01/12-00-00"),
                    root / "outputs", max_streams)
    return TestClient(create_app(models, max_length))


def events(response) -> list[dict]:
    items, ended = [], False
    for block in response.text.split("\n\n"):
        if block.startswith("event: end"):
            ended = True
        elif block.startswith("data: "):
            items += json.loads(block[6:])
    assert ended
    return items


def test_runs_and_the_model(served):
    with client(served) as c:
        runs = c.get("/api/runs").json()
        (run,) = runs["runs"]
        assert run["id"] == runs["served"] == "outputs/2026-01-01/12-00-00"
        assert run["cell"] == "rnn" and run["hidden_size"] == 16 and run["best_val_ppl"] > 1
        info = c.get("/api/model").json()
        assert info["recurrent"] and info["units"] == 16 and info["layers"] == 1


def test_a_generation_streams_its_characters(served):
    with client(served) as c:
        response = c.post("/api/generate", json={"prompt": "to be", "length": 120, "seed": 3,
                                                 "temperature": 0.9, "top_k": 5})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        items = events(response)
        assert len(items) == 120 and all(1 <= n <= 5 and c in top for c, _, _, n, top, _ in items)
        again = events(c.post("/api/generate", json={"prompt": "to be", "length": 120, "seed": 3,
                                                     "temperature": 0.9, "top_k": 5}))
        assert [i[0] for i in again] == [i[0] for i in items]  # the seed decides
        assert c.get("/api/status").json()["streams"] == 0


def test_status_says_null_where_the_system_does_not_tell_memory(served, monkeypatch):
    from charrnn import host

    with client(served) as c:
        status = c.get("/api/status").json()
        assert status["rss_mb"] > 0 and status["max_rss_mb"] > 0  # Linux
        monkeypatch.setattr(host, "rss_mb", lambda: None)  # macOS and Windows
        monkeypatch.setattr(host, "peak_rss_mb", lambda: None)  # Windows
        status = c.get("/api/status").json()
        assert status["rss_mb"] is None and status["max_rss_mb"] is None


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"temperature": -1}, 400, "temperature must be a number >= 0"),
    ({"temperature": "warm"}, 400, "temperature must be a number >= 0"),
    ({"temperature": float("nan")}, 400, "temperature must be a number >= 0"),
    ({"temperature": float("inf")}, 400, "temperature must be a number >= 0"),
    ({"top_k": 0}, 400, "top_k must be an integer from 1 to the vocabulary size"),
    ({"top_k": 1000}, 400, "top_k must be an integer from 1 to the vocabulary size"),
    ({"length": 0}, 400, "length must be a positive integer"),
    ({"length": 301}, 400, "length is at most 300 characters here (the server's max_length)"),
    ({"prompt": "XYZ"}, 400, "prompt has characters that are not in the vocabulary: 'XYZ'"),
    ({"prompt": 5}, 400, "prompt must be text"),
    ({"seed": -1}, 400, "seed must be an integer >= 0"),
    ({"tempreature": 1}, 400, "unknown setting 'tempreature'"),
    ({"unit": [0, 99], "length": 10}, 400, "unit must be [layer, index]"),
    ({"run": "../../etc"}, 404, "no run '../../etc' here"),
])
def test_every_request_is_checked_with_generate_pys_messages(served, body, status, says):
    with client(served) as c:
        response = c.post("/api/generate", content=json.dumps(body))  # NaN and inf as Python
        assert response.status_code == status                           # writes them
        assert says in response.json()["error"] and "Traceback" not in response.text


def test_bodies_that_are_not_json_or_too_big_are_refused(served):
    with client(served) as c:
        response = c.post("/api/generate", content=b"{not json")
        assert response.status_code == 400 and "not JSON" in response.json()["error"]
        response = c.post("/api/score", content=b"x" * (300 * 1024))
        assert response.status_code == 413 and "over 256 KiB" in response.json()["error"]
        response = c.post("/api/score", json={"text": 3})
        assert response.status_code == 400 and "text must be" in response.json()["error"]


def test_more_streams_than_max_streams_is_a_429_with_a_retry_hint(served):
    """The one stream allowed is started on the engine itself and runs until cancelled: the
    test client of some Starlette versions (1.7) reads a whole streamed response before it
    returns, so a stream opened through it may be over before the second request."""
    root, run = served
    models = Models(describe(run / "checkpoints" / "best.ckpt", "served"), root / "outputs", 1)
    with TestClient(create_app(models, 300)) as c:
        _, _, engine = models.get(None)
        first = models.start(engine, prompt="", length=100_000, temperature=1.0, top_k=None,
                             seed=0)
        busy = c.post("/api/generate", json={"length": 10})
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
        assert "busy" in busy.json()["error"]
        first.cancel()
        deadline = time.monotonic() + 10
        while models.active() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.post("/api/generate", json={"length": 10}).status_code == 200


def test_a_client_that_goes_away_ends_its_stream(served):
    """Starlette closes the event generator of a client that disconnected: its stream is
    cancelled there, and the engine computes it no more (the real server: test_server.py)."""
    import asyncio

    from charrnn.serve.app import events

    root, run = served
    models = Models(describe(run / "checkpoints" / "best.ckpt", "served"), root / "outputs", 4)
    _, _, engine = models.get(None)

    async def hang_up_after_one_event() -> None:
        ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        stream = models.start(engine, prompt="", length=100_000, temperature=1.0, top_k=None,
                              seed=0, notify=lambda: loop.call_soon_threadsafe(ready.set))
        source = events(stream, ready)
        assert (await anext(source)).startswith("data: ")
        assert engine.active() == 1
        await source.aclose()  # what Starlette does when the client is gone
        assert stream.cancelled

    asyncio.run(hang_up_after_one_event())
    deadline = time.monotonic() + 10
    while engine.active() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.active() == 0
    models.close()


def test_score_is_generate_pys_number_and_each_character_has_its_surprisal(served):
    _, run = served
    text = "to be or not to be, that is the question\n"
    with client(served) as c:
        result = c.post("/api/score", json={"text": text}).json()
    model, vocab = load_model(run / "checkpoints" / "best.ckpt")
    assert result["ppl"] == score_text(model, vocab, text)["ppl"]
    assert len(result["surprisal_bits"]) == result["characters_scored"] == len(text) - 1 - 1
    assert result["unknown_chars"] == ","


def test_the_page_works_offline():
    """The page and its files: no build step, nothing fetched from another site."""
    names = {p.name for p in STATIC.iterdir()}
    assert {"index.html", "common.js", "app.js", "style.css"} <= names
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, path.name
    scripts = (Path(STATIC) / "index.html").read_text().count('src="/static/')
    assert scripts == 2  # common.js (shared with the exported page), then app.js


def test_units_worth_watching_and_a_text_against_counting(served):
    from charrnn.studies.ngram import KneserNey, baseline, run_split

    _, run = served
    text = "to be or not to be\nthat is the question\n"
    with client(served) as c:
        units = c.get("/api/units").json()
        assert units["source"] == "validation split"
        assert units["units"]["line_position"]["kind"] == "h"
        assert units["units"]["in_quotes_or_brackets"] is None
        versus = c.post("/api/versus", json={"text": text}).json()
        bad = c.post("/api/generate", json={"unit": [0, 1, "c"], "length": 5})
    assert bad.status_code == 400 and "kind h" in bad.json()["error"]
    model, vocab = load_model(run / "checkpoints" / "best.ckpt")
    assert versus["model_ppl"] == pytest.approx(score_text(model, vocab, text)["ppl"])
    split = run_split(run)
    found, _ = baseline(split)
    order = found["order"]
    ngram = KneserNey(split.ids[: split.n_train], len(split.vocab), order)  # counted afresh
    ids = vocab.encode(text).numpy()
    expected = np.exp(-ngram.log_probs(ids, np.arange(1, len(ids)))[order - 1].mean())
    assert versus["order"] == order and versus["ngram_ppl"] == pytest.approx(expected)
    assert len(versus["model_bits"]) == len(versus["ngram_bits"]) == len(text) - 1


def test_a_fork_continues_a_branch_with_another_candidate(served):
    """The branch before the fork kept, the candidate drawn there, its probability told; the
    same fork and settings give the same text."""
    settings = {"prompt": "to be", "length": 80, "seed": 3, "temperature": 0.9}
    with client(served) as c:
        first = events(c.post("/api/generate", json=settings))
        text = "to be" + "".join(item[0] for item in first)
        at = len("to be") + 20
        candidate = next(ch for ch in first[20][4] if ch != first[20][0])  # another of its top
        fork = {"text": text, "at": at, "char": candidate}
        branch = events(c.post("/api/generate", json={**settings, "fork": fork}))
        assert branch[0][0] == candidate and 0 < branch[0][1] < 1
        assert branch[0][1] == dict(zip(first[20][4], first[20][5]))[candidate]  # as offered
        assert len(branch) == 80 - 20  # the branch as long as its parent
        again = events(c.post("/api/generate", json={**settings, "fork": fork}))
        assert [i[0] for i in again] == [i[0] for i in branch]


@pytest.mark.parametrize(("fork", "says"), [
    ({"text": "to be or", "at": 2, "char": "a"},
     "fork.at=2 is not a generated character of the branch: its generated characters are at 5 "
     "to 7"),
    ({"text": "to be or", "at": 8, "char": "a"}, "fork.at=8 is not a generated character"),
    ({"text": "to be or", "at": 6, "char": "#"}, "fork.char must be one character of the vocab"),
    ({"text": "to be or", "at": 6, "char": "ab"}, "fork.char must be one character"),
    ({"text": "not the prompt", "at": 6, "char": "a"}, "fork.text must be a branch's text"),
    ({"text": "to be or", "at": "6", "char": "a"}, 'fork must be {"text"'),
    ({"text": "to be or"}, 'fork must be {"text"'),
])
def test_a_fork_that_does_not_exist_is_a_400_that_says_why(served, fork, says):
    with client(served) as c:
        response = c.post("/api/generate", json={"prompt": "to be", "length": 20, "fork": fork})
        assert response.status_code == 400 and says in response.json()["error"]
        top_k = c.post("/api/generate", json={"prompt": "to be", "length": 20, "top_k": 1,
                                              "fork": {"text": "to be or", "at": 6,
                                                       "char": "本"}})  # never after "to be "
        assert top_k.status_code == 400
        assert "had probability 0 at position 6 under top_k=1" in top_k.json()["error"]


def test_a_generation_mixed_with_counting_reports_both_parts(served):
    with client(served) as c:
        items = events(c.post("/api/generate", json={"prompt": "to be", "length": 60,
                                                     "seed": 2, "mix": "ngram"}))
        assert len(items) == 60 and all(len(item) == 7 for item in items)
        (chosen,) = json.loads((served[1] / "mixture.json").read_text()).values()
        odds_checked = 0
        for _, p, q, _, top, top_p, parts in items:
            (model, ngram), *top_parts = parts
            assert p == q  # T = 1, no top_k: drawn from the mixture itself
            assert len(top_parts) == len(top)
            if not chosen["loglinear"]:
                assert min(model, ngram) - 1e-3 <= q <= max(model, ngram) + 1e-3  # between
                continue
            # log-linear: two candidates' odds are the parts' odds to the fitted powers
            a, b = chosen["loglinear_weights"]
            (m0, n0), (m1, n1) = top_parts[:2]
            if min(m0, n0, m1, n1, *top_p[:2]) > 0.02:
                odds = a * np.log(m0 / m1) + b * np.log(n0 / n1)
                assert np.log(top_p[0] / top_p[1]) == pytest.approx(odds, abs=0.05)
                odds_checked += 1
        assert odds_checked > 5 or not chosen["loglinear"]
        again = events(c.post("/api/generate", json={"prompt": "to be", "length": 60,
                                                     "seed": 2, "mix": "ngram"}))
        assert [i[0] for i in again] == [i[0] for i in items]
        bad = c.post("/api/generate", json={"prompt": "to be", "length": 9, "mix": "kenlm"})
        assert bad.status_code == 400 and "mix must be ngram or none" in bad.json()["error"]


def test_what_the_characters_became(served):
    with client(served) as c:
        data = c.get("/api/characters").json()
        _, vocab = load_model(served[1] / "checkpoints" / "best.ckpt")
        assert [p[0] for p in data["trained"]["points"]] == list(vocab.chars)
        assert set(data["trained"]["nearest"]) == set(vocab.chars)
        assert data["vectors"] == "columns of the first layer's W_ih"
        assert "separation" in data["untrained"]["classes"]
        assert c.get("/api/characters?run=nope").status_code == 404
