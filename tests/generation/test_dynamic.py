"""Scoring a run's own split, and dynamic evaluation (weights that adapt while reading)."""

import csv
import io
import math
import shutil

import pytest
import torch

from charrnn.data.corpus import split_sizes, split_text
from charrnn.data.vocab import CharVocab
from charrnn.errors import CharRNNError
from charrnn.generation.dynamic import dynamic_loss_sum
from charrnn.generation.loading import load_model
from charrnn.generation.sampling import score_text
from charrnn.models.registry import CharRNN
from charrnn.training.run import train
from tests.conftest import TINY, compose_train, make_corpus, run_script


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LSTM run trained once for this file: (run folder, corpus path)."""
    tmp = tmp_path_factory.mktemp("dynamic")
    corpus = make_corpus(tmp / "corpus.txt")
    train(compose_train([f"data.path={corpus}", f"run_dir={tmp / 'run'}", *TINY,
                         "model.cell=lstm", "model.num_layers=2"]))
    return tmp / "run", corpus


def sums_by_segment(model, ids, lr, segment):
    """The loss sum after every segment of a dynamic evaluation."""
    sums = []
    dynamic_loss_sum(model, ids, lr, segment, on_progress=lambda done, n, s: sums.append(s))
    return sums


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_every_character_is_scored_before_the_weights_learn_from_it(cell):
    torch.manual_seed(0)
    model = CharRNN(7, hidden_size=16, num_layers=2, cell=cell).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 7, (101,))
    changed = ids.clone()
    changed[60:] = (changed[60:] + 1) % 7  # same first 60 characters, then a different text

    # With lr 0 the weights never move: the static score, however the text is segmented.
    static = score_text(model, CharVocab("abcdefg"), "".join("abcdefg"[i] for i in ids))["loss"]
    assert math.isclose(sums_by_segment(model, ids, 0.0, 7)[-1] / 100, static, rel_tol=1e-5)

    adapted = sums_by_segment(model, ids, 0.05, 20)
    other = sums_by_segment(model, changed, 0.05, 20)
    # The first segment is scored with the trained weights, and the first 59 targets do not
    # depend on what follows them ...
    first = score_text(model, CharVocab("abcdefg"), "".join("abcdefg"[i] for i in ids[:21]))
    assert math.isclose(adapted[0] / 20, first["loss"], rel_tol=1e-5)
    assert adapted[:2] == other[:2]
    # ... while later segments are scored with weights that learned from the earlier ones.
    assert adapted[2:] != sums_by_segment(model, ids, 0.0, 20)[2:]
    for key, value in model.state_dict().items():  # the caller's model is left as it was
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_adapting_to_a_repeated_unseen_phrase_lowers_its_perplexity(trained):
    run, _ = trained
    model, vocab = load_model(run / "checkpoints" / "best.ckpt")
    text = "naïve café or tis " * 40  # characters of the corpus, a phrase it never had
    static = score_text(model, vocab, text)["ppl"]
    dynamic = score_text(model, vocab, text, chunk=20, dynamic_lr=0.01)["ppl"]
    assert dynamic < 0.75 * static, (static, dynamic)  # measured: 22.4 -> 13.4


def test_split_text_is_the_runs_own_split_with_the_character_before_it(trained):
    run, corpus = trained
    text = corpus.read_text(encoding="utf-8")
    n_train, n_val, n_test = split_sizes(len(text), 0.1, 0.1)
    assert split_text(run, "val") == text[n_train - 1 : n_train + n_val]
    assert split_text(run, "test") == text[n_train + n_val - 1 :]
    model, vocab = load_model(run / "checkpoints" / "best.ckpt")
    assert score_text(model, vocab, split_text(run, "test"))["characters_scored"] == n_test


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["split=val", "text_path=some.txt"], "one of the two"),
        (["split=train"], "split must be val or test"),
        (["split=val", "dynamic.lr=-1"], "dynamic.lr must be a number >= 0"),
        (["split=val", "dynamic.lr=fast"], "dynamic.lr must be a number >= 0"),
        (["split=val", "dynamic.segment=0"], "dynamic.segment must be a positive integer"),
    ],
)
def test_bad_score_settings(trained, args, message):
    from generate import generate

    run, _ = trained
    cfg = compose_train([f"ckpt_path={run}", "mode=score", *args], config_name="generate")
    with pytest.raises(CharRNNError, match=message):
        generate(cfg, stream=io.StringIO())


def test_split_needs_the_run_folder_and_its_corpus(trained, tmp_path):
    from generate import generate

    run, corpus = trained
    loose = tmp_path / "loose.ckpt"
    shutil.copy(run / "checkpoints" / "best.ckpt", loose)
    cfg = compose_train([f"ckpt_path={loose}", "mode=score", "split=test"], config_name="generate")
    with pytest.raises(CharRNNError, match="needs a checkpoint inside a run folder"):
        generate(cfg, stream=io.StringIO())

    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    config = moved / "config.yaml"
    config.write_text(config.read_text().replace(str(corpus), str(tmp_path / "gone.txt")))
    cfg = compose_train([f"ckpt_path={moved}", "mode=score", "split=test"], config_name="generate")
    with pytest.raises(CharRNNError, match="gone.txt"):
        generate(cfg, stream=io.StringIO())


@pytest.mark.slow
def test_score_sweep_over_dynamic_lr_with_a_failing_job(trained, tmp_path):
    run, _ = trained
    result = run_script("generate.py", "-m", f"ckpt_path={run}", "mode=score", "split=val",
                        "dynamic.segment=25", "dynamic.lr=0,0.003,-1", cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # one job failed; the others ran
    assert "dynamic evaluation, Adam lr 0.003 every 25 characters" in result.stdout
    assert "perplexity so far" in result.stderr  # progress while adapting
    (summary,) = (tmp_path / "outputs" / "generate").glob("*/*/summary.csv")
    rows = list(csv.DictReader(summary.open()))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert "dynamic.lr must be a number >= 0" in rows[2]["error"]
    assert all(float(r["ppl"]) > 1 for r in rows[:2])
    assert (summary.parent / "summary.png").is_file()
