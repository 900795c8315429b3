import io
import math
import os
import pickle
import re

import pytest
import torch
import torch.nn.functional as F

from charrnn.data.vocab import CharVocab
from charrnn.errors import CharRNNError
from charrnn.generation.loading import load_model
from charrnn.generation.sampling import next_char_distribution, sample_text, score_text
from charrnn.models.registry import CharRNN
from charrnn.training.run import train
from tests.conftest import TINY, compose_train, make_corpus, run_script


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained once for every test in this file: (run folder, corpus path)."""
    tmp = tmp_path_factory.mktemp("trained")
    corpus = make_corpus(tmp / "corpus.txt")
    train(compose_train([f"data.path={corpus}", f"run_dir={tmp / 'run'}", *TINY]))
    return tmp / "run", corpus


def tiny_model(vocab_size: int = 7, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(vocab_size, hidden_size=8).eval()


def test_temperature_math_on_fixed_logits():
    logits = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(next_char_distribution(logits, 0.5), F.softmax(logits * 2, dim=-1))
    torch.testing.assert_close(next_char_distribution(logits, 1.0), F.softmax(logits, dim=-1))
    high = next_char_distribution(logits, 100.0)
    assert (high - 1 / 3).abs().max() < 0.01  # high T flattens towards uniform
    top2 = next_char_distribution(logits, 1.0, top_k=2)
    assert top2[0] == 0 and math.isclose(top2[1:].sum().item(), 1.0, rel_tol=1e-6)


def test_same_seed_same_text_and_different_seed_differs():
    model, vocab = tiny_model(), CharVocab("abcdefg")
    run = lambda seed: sample_text(  # noqa: E731
        model, vocab, "abc", 200, 1.0, generator=torch.Generator().manual_seed(seed)
    )
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_temperature_zero_is_argmax_decoding():
    model, vocab = tiny_model(), CharVocab("abcdefg")
    (text,) = sample_text(model, vocab, "ab", 30, temperature=0)
    x = vocab.encode("ab").long().unsqueeze(0)
    logits, state = model(x)
    expected = []
    for _ in range(30):
        ids = logits[:, -1].argmax(-1, keepdim=True)
        expected.append(vocab.chars[ids.item()])
        logits, state = model(ids, state)
    assert text == "".join(expected)


def test_top_k_never_leaves_the_top_k():
    model, vocab = tiny_model(), CharVocab("abcdefg")
    seen = []
    # Record, at every step, whether the drawn character was among the k most likely.
    original = model.forward
    last = {}

    def spy(x, state=None):
        logits, state = original(x, state)
        last["top"] = set(torch.topk(logits[0, -1], 2).indices.tolist())
        return logits, state

    model.forward = spy
    sample_text(model, vocab, "a", 300, temperature=2.0, top_k=2,
                on_step=lambda chars: seen.append(vocab.chars.index(chars[0]) in last["top"]),
                generator=torch.Generator().manual_seed(0))
    assert len(seen) == 300 and all(seen)


def test_batched_samples_have_the_length_asked_for():
    samples = sample_text(tiny_model(), CharVocab("abcdefg"), "", 50, num_samples=4,
                          generator=torch.Generator().manual_seed(0))
    assert len(samples) == 4 and all(len(s) == 50 for s in samples)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "abz!"}, "not in the vocabulary: '!z'"),
        ({"temperature": -0.1}, "temperature must be a number >= 0"),
        ({"temperature": "hot"}, "temperature must be a number >= 0"),
        ({"length": 0}, "length must be a positive integer"),
        ({"top_k": 0}, "top_k must be an integer from 1 to the vocabulary size 7"),
        ({"top_k": 8}, "top_k must be an integer from 1 to the vocabulary size 7"),
    ],
)
def test_bad_sampling_arguments(kwargs, message):
    with pytest.raises(CharRNNError, match=message):
        sample_text(tiny_model(), CharVocab("abcdefg"), **{"length": 5, **kwargs})


def test_load_model_from_checkpoint_alone(trained):
    run, corpus = trained
    model, vocab = load_model(run / "checkpoints" / "best.ckpt")
    assert vocab.chars == "".join(sorted(set(corpus.read_text(encoding="utf-8"))))
    assert not model.training
    result = score_text(model, vocab, corpus.read_text(encoding="utf-8")[:500] + "@@#")
    assert result["unknown_removed"] == 3 and result["unknown_chars"] == "#@"
    assert result["ppl"] < len(vocab)  # better than uniform after training


class RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_checkpoint_files_are_refused_without_running_code(trained, tmp_path):
    run, _ = trained
    good = (run / "checkpoints" / "best.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.ckpt").write_text("hello")
    marker = tmp_path / "pwned"
    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": RunsCode(marker)}))
    torch.save({"state_dict": {}, "hyper_parameters": {"vocab": RunsCode(marker)}},
               tmp_path / "evil2.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"vocab": tmp_path}}, tmp_path / "path.ckpt")
    # the refused object's name as torch gives it (PosixPath lives in pathlib._local from 3.13)
    for name, why in [("truncated.ckpt", "truncated or damaged: "),
                      ("text.ckpt", "not a file torch.save writes"),
                      ("evil.ckpt", "not a file torch.save writes"),
                      ("evil2.ckpt", r"objects a safe, weights-only load refuses: Trying to load "
                                     r"unsupported GLOBAL posix.system whose module posix is "
                                     r"blocked.\). Set ckpt_path"),
                      ("path.ckpt", r"refuses: Unsupported global: GLOBAL pathlib(._local)?"
                                    r".PosixPath was not an allowed global by default.\). Set "
                                    r"ckpt_path")]:
        with pytest.raises(CharRNNError, match="not a loadable charrnn checkpoint") as err:
            load_model(tmp_path / name)
        assert re.search(why, str(err.value)), str(err.value)
        assert "weights_only" not in str(err.value)  # torch's advice to load it unsafely
    assert not marker.exists()


@pytest.mark.slow
def test_generate_entry_point_round_trip(trained, tmp_path):
    run, corpus = trained
    result = run_script("generate.py", f"ckpt_path={run}", "length=80", "prompt=to be",
                        "output=out.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out.txt").read_text(encoding="utf-8")
    assert text.startswith("to be") and len(text) == len("to be") + 80 + 1
    assert text.strip() in result.stdout
    again = run_script("generate.py", f"ckpt_path={run}", "length=80", "prompt=to be", cwd=tmp_path)
    assert again.stdout == result.stdout  # same seed, same text
    assert {p.name for p in tmp_path.iterdir()} == {"out.txt"}  # nothing else written

    sweep = run_script("generate.py", "-m", f"ckpt_path={run}", "temperature=0.5,1.5",
                       "length=40", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    jobs = sorted((tmp_path / "outputs" / "generate").glob("*/*/*temperature*"))
    # named by the swept key only: the fixed length=40 is in summary.md, once
    assert [j.name for j in jobs] == ["0_temperature-0.5", "1_temperature-1.5"]
    for job in jobs:
        assert len((job / "sample.txt").read_text(encoding="utf-8")) == 40 + 1
        assert "temperature:" in (job / "config.yaml").read_text()
        assert (job / "metrics.json").is_file()
    assert (jobs[0].parent / "summary.md").is_file()  # the sweep summary ran

    score = run_script("generate.py", f"ckpt_path={run}", "mode=score",
                       f"text_path={corpus}", cwd=tmp_path)
    assert score.returncode == 0 and "perplexity" in score.stdout


def test_generate_bad_input_exits_2_with_the_message(trained, tmp_path):
    run, _ = trained
    result = run_script("generate.py", f"ckpt_path={run}", "prompt=XYZ", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "not in the vocabulary: 'XYZ'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["temperature=-1"], "temperature must be a number >= 0"),
        (["temperature=warm"], "temperature must be a number >= 0"),
        (["length=0"], "length must be a positive integer"),
        (["top_k=1000"], "top_k must be an integer from 1"),
        (["top_k=0"], "top_k must be an integer from 1"),
        (["ckpt_path=missing.ckpt"], "does not exist"),
        (["ckpt_path=null"], "no checkpoint given"),
        (["mode=sing"], "mode must be sample, score, serve or export"),
        (["mode=score"], "mode=score needs text_path"),
        (["seed=abc"], "seed must be an integer >= 0, got 'abc'"),
        (["device=tpu"], r"device must be cpu or cuda \(cuda:N: one GPU of several\), got 'tpu'"),
        (["output=/no/such/folder/sample.txt"], "the folder /no/such/folder does not exist"),
        (["output=."], r"output=\. is a folder\. Set output to a file, e\.g\. `output=sample"),
        (["prompt_file=."], r"prompt_file=/\S+ is a folder, not a text file"),
        (["mode=score", "text_path=."], r"text_path=/\S+ is a folder, not a text file"),
        pytest.param(["device=cuda"], "device=cuda asks for a GPU, and torch .* sees none. Use "
                     "device=cpu", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                            reason="there is a GPU")),
    ],
)
def test_generate_bad_input(trained, args, message):
    """The same checks as the command line, through generate.py's function (no subprocess)."""
    from generate import generate

    run, _ = trained
    cfg = compose_train([f"ckpt_path={run}", *args], config_name="generate")
    with pytest.raises(CharRNNError, match=message):
        generate(cfg, stream=io.StringIO())


def test_an_output_under_a_file_is_refused_before_generating(trained):
    from generate import generate

    run, _ = trained
    best = run / "checkpoints" / "best.ckpt"
    cfg = compose_train([f"ckpt_path={run}", f"output={best}/sample.txt"], config_name="generate")
    with pytest.raises(CharRNNError, match=f"a file is in the way: {best} is a file"):
        generate(cfg, stream=io.StringIO())


@pytest.mark.parametrize("num_layers", [1, 2])
def test_fast_rnn_step_equals_the_model(num_layers):
    from charrnn.models.rnn import _TanhStepper

    model = CharRNN(7, hidden_size=8, num_layers=num_layers).eval()
    step = model.stepper()
    assert isinstance(step, _TanhStepper)
    x = torch.randint(0, 7, (3, 6))
    expected, expected_state = model(x)
    _, state = model(x[:, :1])
    for t in range(1, 6):
        logits, state = step(x[:, t], state)
        torch.testing.assert_close(logits, expected[:, t])
    torch.testing.assert_close(state, expected_state)


def test_exponential_race_draws_with_the_given_probabilities():
    from charrnn.generation.sampling import draw

    probs = torch.tensor([0.1, 0.6, 0.3]).expand(20000, 3)
    counts = torch.bincount(draw(probs, torch.Generator().manual_seed(0)), minlength=3)
    torch.testing.assert_close(counts / 20000, probs[0], atol=0.015, rtol=0)


@pytest.mark.slow
def test_benchmark_runs_end_to_end_tiny(tmp_path):
    from charrnn.bench import main

    results = main(["--tiny", "--only", "generate", "--json", str(tmp_path / "bench.json")])
    assert results["generate_64_chars_per_s"] > 0 and results["first_char_over_import"] > 0
    assert results["generate_transformer_1_chars_per_s"] > 0
    assert results["generate_transformer_64_chars_per_s"] > 0
    assert (tmp_path / "bench.json").is_file()
