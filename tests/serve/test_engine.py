"""Continuous batching: a stream's text depends on its own settings only, whoever else runs."""

import math
import time

import pytest
import torch

from charrnn.data.vocab import CharVocab
from charrnn.generation.sampling import sample_text
from charrnn.models.registry import build_model
from charrnn.serve.engine import Engine

VOCAB = CharVocab.from_text("\n abcdefghijklmnopqrstuvwxyz:")


def model(cell: str = "rnn", **settings):
    torch.manual_seed(0)
    extra = {"num_layers": 2, "num_heads": 2, "context_length": 8} if cell == "transformer" \
        else {"num_layers": 2}
    return build_model(len(VOCAB), cell=cell, hidden_size=16, **{**extra, **settings}).eval()


def text(stream) -> str:
    return "".join(item[0] for item in stream.items if isinstance(item, list))


def steps(stream) -> list[dict]:
    """The stream's generated characters, their fields named."""
    names = ("c", "p", "q", "n", "top", "top_p")
    return [dict(zip(names, item)) for item in stream.items if isinstance(item, list)]


def wait(streams, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not all(s.done or s.cancelled for s in streams):
        assert time.monotonic() < deadline, "the engine did not finish"
        time.sleep(0.001)


@pytest.fixture
def engines():
    made = []
    yield lambda net: made.append(Engine(net, VOCAB)) or made[-1]
    for engine in made:
        engine.close()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "transformer"])
def test_a_stream_writes_the_same_text_alone_or_batched_with_others(cell, engines):
    """Streams that join at other steps, with other prompts and settings, leave one stream's
    text unchanged: same seed, same text. For the Transformer (context 8) past its window."""
    net = model(cell)
    alone = engines(net).start("to be", 40, 0.8, None, 7)
    wait([alone])
    engine = engines(net)
    others = [engine.start("ab", 60, 1.5, 3, 1)]
    time.sleep(0.01)  # the stream below joins while another is half way
    watched = engine.start("to be", 40, 0.8, None, 7)
    others += [engine.start("", 10, 1.0, None, s) for s in range(3)]
    wait([watched, *others])
    assert len(text(watched)) == 40 and text(watched) == text(alone)


@pytest.mark.parametrize("batched", [True, False])
def test_generate_py_writes_the_same_text_for_the_same_seed(engines, monkeypatch, batched):
    """The CLI's sample_text and the engine draw alike: the same text for the same settings,
    whether the engine draws its noise many steps at once or, under a torch whose batched
    draws differ from step-by-step ones (2.6), step by step."""
    from charrnn.serve import engine

    if not batched:
        monkeypatch.setattr(engine, "rows_draw_like_steps", lambda rows, size: False)
    elif not engine.rows_draw_like_steps(engine.NOISE_ROWS, len(VOCAB)):
        pytest.skip("this torch's batched draws differ from step-by-step ones")
    net = model("rnn", num_layers=1)
    stream = engines(net).start("to be", 60, 0.8, 5, 7)
    wait([stream])
    cli = sample_text(net, VOCAB, "to be", 60, 0.8, 5, generator=torch.Generator().manual_seed(7))
    assert text(stream) == cli[0]


def test_each_character_says_what_it_was_chosen_from(engines):
    net = model("rnn")
    engine = engines(net)
    sampled, greedy, top1 = (engine.start("ab", 20, 0.7, 4, 3), engine.start("ab", 20, 0, None, 3),
                             engine.start("ab", 20, 1.0, 1, 3))
    wait([sampled, greedy, top1])
    assert text(greedy) == text(top1)  # top_k=1 is greedy
    for item in steps(greedy):
        assert item["p"] == 1.0 and item["n"] == 1.0 and item["top"][0] == item["c"]
        assert item["top_p"][0] == 1.0 and set(item["top_p"][1:]) <= {0.0}
    first = steps(sampled)[0]
    with torch.no_grad():
        logits, _ = net(VOCAB.encode("ab").long()[None])
    logits = logits[0, -1]
    kth = torch.topk(logits, 4).values[-1]
    probs = torch.softmax(logits.masked_fill(logits < kth, -math.inf) / 0.7, dim=0)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    assert first["n"] == pytest.approx(math.exp(entropy), abs=0.01) and first["n"] <= 4
    assert first["top_p"][0] == pytest.approx(float(probs.max()), abs=1e-4)
    assert first["top_p"][4] == 0 and first["c"] in first["top"][:4]  # top_k=4: 4 possible
    chosen = VOCAB.chars.index(first["c"])
    assert first["p"] == pytest.approx(float(probs[chosen]), abs=1e-4)
    assert first["q"] == pytest.approx(float(torch.softmax(logits, 0)[chosen]), abs=1e-4)


def test_a_watched_unit_follows_every_character_read(engines):
    """With `unit`, each character read (the prompt, then every generated one but the last) is
    followed by the unit's value after reading it: the model's own hidden state."""
    net = model("lstm")
    stream = engines(net).start("to be", 12, 1.0, None, 2, unit=(1, 5, "h"))
    wait([stream])
    values = [item for item in stream.items if isinstance(item, float)]
    written = "to be" + text(stream)
    assert len(values) == len("to be") + 12 - 1
    outputs = []
    state = None
    with torch.no_grad():
        for ch in written[:-1]:
            _, state = net(VOCAB.encode(ch).long()[None], state)
            outputs.append(float(state[0][1, 0, 5]))
    assert values == pytest.approx(outputs, abs=1e-4)


def test_a_cancelled_stream_is_not_computed_again(engines):
    net = model("rnn")
    engine = engines(net)
    stream = engine.start("", 100_000, 1.0, None, 0)
    while stream.generated < 5:
        time.sleep(0.001)
    stream.cancel()
    at_cancel = stream.generated
    deadline = time.monotonic() + 5
    while engine.active() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert engine.active() == 0 and stream.generated <= at_cancel + 1
    steps = engine.steps
    time.sleep(0.05)
    assert engine.steps == steps  # nothing runs for nobody


@pytest.mark.parametrize("cell", ["rnn", "lstm", "transformer"])
def test_a_fork_reads_its_prefix_in_one_call_and_goes_on_from_the_candidate(cell, engines):
    """A 1,500-character prefix costs one model call, not one step per character; then the
    fork writes its candidate and draws the rest as a stream would after that text."""
    net = model(cell)
    engine = engines(net)
    prefix = ("to be or not to be that is the question\n" * 40)[:1500]
    calls = []
    net.register_forward_hook(lambda *args: calls.append(1))
    logits, state = engine.read(prefix)
    assert len(calls) == 1 and engine.reads == 1 and engine.steps == 0
    stream = engine.fork(logits, state, "w", 30, 0.8, None, 5)
    wait([stream])
    assert text(stream)[0] == "w" and len(text(stream)) == 30
    assert engine.steps == 29  # one batched step per character drawn after the candidate
    probs = torch.softmax(logits / 0.8, dim=0)
    assert steps(stream)[0]["p"] == pytest.approx(float(probs[VOCAB.chars.index("w")]), abs=1e-4)
    again = engine.fork(*engine.read(prefix), "w", 30, 0.8, None, 5)
    wait([again])
    assert text(again) == text(stream)  # same fork, same seed: same text
