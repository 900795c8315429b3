"""The network and counting mixed: λ and the order chosen on validation, the test scored once."""

import json
import math

import numpy as np
import pytest

from charrnn.errors import CharRNNError
from charrnn.studies.mixture import EDGES, buckets, check_mix, choose, mix_log_probs
from tests.conftest import TINY, run_script


def test_a_mixture_of_two_models_is_their_weighted_probability():
    model, ngram = np.log([0.5, 0.1]), np.log([0.1, 0.3])
    assert np.allclose(np.exp(mix_log_probs(model, ngram, 0.25)), [0.2, 0.25])
    assert np.allclose(mix_log_probs(model, ngram, 1.0), model)
    assert np.allclose(mix_log_probs(model, ngram, 0.0), ngram)


def test_validation_chooses_the_order_and_a_weight_per_bucket():
    """Counting knows frequent contexts (bucket of 1024+) and the network the rest: one λ for
    all is a compromise, a λ per bucket gives each to the one that knows."""
    rng = np.random.default_rng(0)
    n = 4000
    frequent = rng.random(n) < 0.5
    model = np.where(frequent, np.log(0.05), np.log(0.6))
    good, poor = np.where(frequent, np.log(0.7), np.log(0.02)), np.full(n, np.log(0.1))
    ngram = np.stack([poor, good])  # order 2 is the good one
    counts = np.stack([np.full(n, 5000), np.where(frequent, 5000, 0)])
    mixture = choose(model, ngram, counts)
    assert mixture.order == 2 and 0.2 < mixture.weight < 0.8
    weights = dict(zip(EDGES.tolist(), mixture.bucket_weights))
    assert weights[1024] < 0.05 and weights[0] > 0.95
    assert mixture.bucketed and mixture.val_ppl_bucketed < mixture.val_ppl
    assert buckets(np.array([0, 1, 3, 4, 1500])).tolist() == [0, 1, 2, 3, 11]
    fixed = choose(model, ngram, counts, weight=0.3)
    assert fixed.weight == 0.3 and not fixed.bucketed


def test_the_coarse_then_fine_search_finds_the_best_of_the_whole_grid():
    from charrnn.studies.mixture import WEIGHTS

    rng = np.random.default_rng(1)
    for _ in range(20):
        model = np.log(rng.uniform(0.01, 1, 500) ** rng.uniform(0.2, 4))
        ngram = np.log(rng.uniform(0.01, 1, (1, 500)) ** rng.uniform(0.2, 4))
        losses = [-mix_log_probs(model, ngram[0], w).mean() for w in WEIGHTS]
        chosen = choose(model, ngram, np.zeros((1, 500), dtype=int))
        assert chosen.weight == pytest.approx(WEIGHTS[int(np.argmin(losses))])


def test_the_log_linear_fit_finds_the_best_exponents_and_sums_to_one():
    from charrnn.studies.mixture import fit_loglinear, loglinear_log_probs

    rng = np.random.default_rng(2)
    n, v = 3000, 7
    truth = rng.normal(size=(n, v)) * 2
    targets = np.array([rng.choice(v, p=np.exp(r - np.logaddexp.reduce(r))) for r in truth])
    norm = lambda x: x - np.logaddexp.reduce(x, axis=1, keepdims=True)  # noqa: E731
    model = norm(truth + rng.normal(size=(n, v)))  # two noisy views of the truth
    ngram = norm(truth + rng.normal(size=(n, v)))
    a, b, ppl = fit_loglinear(model, ngram, targets)

    def grid_loss(a: float, b: float) -> float:
        return -loglinear_log_probs(model, ngram, a, b, targets).mean()

    assert math.exp(grid_loss(a, b)) == pytest.approx(ppl)
    near = [grid_loss(a + da, b + db) for da in (-0.05, 0, 0.05) for db in (-0.05, 0, 0.05)]
    assert grid_loss(a, b) <= min(near) + 1e-12  # a minimum
    assert ppl < math.exp(-model[np.arange(n), targets].mean())  # better than the model alone
    assert np.allclose(np.exp(loglinear_log_probs(model, ngram, a, b)).sum(1), 1)
    assert np.allclose(loglinear_log_probs(model, ngram, 1.0, 0.0), model)


def test_the_ngrams_distributions_hold_its_scores(corpus):
    from charrnn.studies.mixture import ngram_log_probs
    from charrnn.studies.ngram import KneserNey, load_split

    split = load_split(corpus)
    counts = KneserNey(split.ids[: split.n_train], len(split.vocab), 5)
    full = ngram_log_probs(counts, 5, split.ids, split.val)
    at = full[np.arange(len(split.val)), split.ids[split.val]]
    assert np.allclose(at, counts.log_probs(split.ids, split.val)[4], rtol=1e-10)


def test_the_choice_on_validation_is_kept_per_model_in_mixture_json(corpus, tmp_path,
                                                                    monkeypatch):
    import torch

    from charrnn.models.registry import build_model
    from charrnn.studies import mixture as mixing
    from charrnn.studies.ngram import load_split

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"data:\n  path: {corpus}\n  cache_dir: null\n"
                                     "  val_fraction: 0.1\n  test_fraction: 0.1\n")
    split = load_split(corpus)
    torch.manual_seed(0)
    model = build_model(len(split.vocab), hidden_size=8).eval()
    first, _ = mixing.chosen_on_validation(run, model, split, None)
    assert (run / mixing.MIXTURE_FILE).is_file()

    def no_reading(*args):
        raise AssertionError("the model read the validation split again")

    monkeypatch.setattr(mixing, "split_log_probs", no_reading)
    again, counts = mixing.chosen_on_validation(run, model, split, None)
    assert again == first and counts.max_order == first.order
    with pytest.raises(AssertionError, match="read the validation split again"):
        mixing.chosen_on_validation(run, model, split, 0.5)  # another setting
    with torch.no_grad():
        model.head.bias.add_(0.1)  # another model
    with pytest.raises(AssertionError, match="read the validation split again"):
        mixing.chosen_on_validation(run, model, split, None)


@pytest.mark.parametrize(("mix", "weight", "says"), [
    ("kenlm", None, "mix must be ngram or none, got 'kenlm'"),
    ("ngram", 1.5, "mix_weight must be a number from 0 to 1"),
    ("ngram", -0.1, "mix_weight must be a number from 0 to 1"),
])
def test_bad_mix_settings_say_the_allowed_values(mix, weight, says):
    with pytest.raises(CharRNNError, match=says):
        check_mix(mix, weight, "conf/train/train.yaml")
    assert check_mix("none", 2, "x") is None and check_mix(None, None, "x") is None


@pytest.mark.slow
def test_train_py_adds_the_mixed_test_score_and_generate_py_prints_it(corpus, tmp_path):
    run = tmp_path / "run"
    result = run_script("train.py", f"data.path={corpus}", f"run_dir={run}", *TINY,
                        "mix=ngram", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_ppl"] > 1 and metrics["mix_test_ppl"] > 1  # the network's own kept
    assert 1 <= metrics["mix_order"] <= 10 and 0 <= metrics["mix_weight"] <= 1
    assert "mixed with counting (Kneser-Ney order" in result.stdout
    # λ = 1 is the network alone, as mode=score reads the split
    score = run_script("generate.py", "mode=score", f"ckpt_path={run}", "split=test",
                       "mix=ngram", "mix_weight=1", cwd=tmp_path)
    assert score.returncode == 0, score.stderr[-2000:]
    alone = float(score.stdout.split("perplexity ")[1].split()[0])
    mixed = float(score.stdout.split("test perplexity ")[1].split(";")[0])
    assert math.isclose(mixed, alone, rel_tol=1e-4)
    # where the mixture gains, by group: the whole split's row is the perplexity in bits
    from charrnn.studies.mixture import main

    (result,) = main([str(run)])
    whole, *groups = result["groups"]
    assert whole["group"] == "whole test split"
    assert 2 ** whole["mixed"] == pytest.approx(result["mix_test_ppl"], rel=1e-9)
    assert {"line position 0", "word start"} <= {g["group"] for g in groups}


@pytest.mark.slow
def test_mixing_refuses_what_it_cannot_do_in_one_paragraph(corpus, tmp_path):
    run = tmp_path / "run"
    bad = run_script("train.py", f"data.path={corpus}", f"run_dir={run}", *TINY,
                     "mix=ngram", "mix_weight=2", cwd=tmp_path)
    assert bad.returncode == 2 and "mix_weight must be a number from 0 to 1" in bad.stderr
    assert not run.exists()  # refused before training
    assert run_script("train.py", f"data.path={corpus}", f"run_dir={run}", *TINY,
                      "trainer.max_epochs=1", cwd=tmp_path).returncode == 0
    result = run_script("generate.py", "mode=score", f"ckpt_path={run}", "text_path=x.txt",
                        "mix=ngram", cwd=tmp_path)
    assert result.returncode == 2 and "mix=ngram scores a split" in result.stderr
    corpus.rename(tmp_path / "moved.txt")  # the run's corpus is not where its config says
    result = run_script("generate.py", "mode=score", f"ckpt_path={run}", "split=test",
                        "mix=ngram", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the corpus of the run in" in result.stderr and "data.path" in result.stderr


def test_a_run_whose_corpus_moved_names_the_key_that_points_to_it(corpus, tmp_path):
    from charrnn.studies.ngram import run_split

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(
        f"data:\n  path: {tmp_path / 'gone.txt'}\n  cache_dir: x\n  val_fraction: 0.1\n"
        "  test_fraction: 0.1\n")
    with pytest.raises(CharRNNError, match=r"is not at .*gone.txt, where data.path \(or "
                                           r"data.cache_dir\) of .*config.yaml points"):
        run_split(tmp_path / "run")


def test_the_incremental_ngram_is_the_counting_models_distribution(corpus):
    from charrnn.studies.mixture import NgramNext, context_counts
    from charrnn.studies.ngram import KneserNey, load_split

    split = load_split(corpus)
    counts = KneserNey(split.ids[: split.n_train], len(split.vocab))
    for order in (1, 3, 7):
        step = NgramNext(counts, order)
        for t in (split.n_train + 10, split.n_train + 200, len(split.ids) - 1):
            context = split.ids[t - 12 : t].tolist()
            p, seen = step(context)
            expected = counts.distribution(np.array(context), order)
            assert np.allclose(p, expected, rtol=1e-12, atol=0) and p.sum() == pytest.approx(1)
            assert seen == context_counts(counts, split.ids, np.array([t]), order)[0]


@pytest.mark.slow
def test_generation_mixed_draws_from_the_mixture(corpus, tmp_path):
    """λ = 1 draws what the model alone draws; the mixture's text is its seed's."""
    run = tmp_path / "run"
    assert run_script("train.py", f"data.path={corpus}", f"run_dir={run}", *TINY,
                      "trainer.max_epochs=1", cwd=tmp_path).returncode == 0
    common = ["length=80", "prompt=to be", f"ckpt_path={run}"]

    def text(*args: str) -> str:
        result = run_script("generate.py", *common, *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    assert text("temperature=0", "mix=ngram", "mix_weight=1") == text("temperature=0")
    mixed = text("mix=ngram", "seed=3")
    assert mixed == text("mix=ngram", "seed=3") != text("mix=ngram", "seed=4")
    assert mixed != text("seed=3")


def test_generation_draws_from_the_log_linear_mixture_when_validation_chose_it(corpus):
    import torch

    from charrnn.studies.mixture import MixedNext, Mixture, NgramNext, loglinear_log_probs
    from charrnn.studies.ngram import KneserNey, load_split

    split = load_split(corpus)
    counts = KneserNey(split.ids[: split.n_train], len(split.vocab), 4)
    mixture = Mixture(4, 0.5, 5.0, [0.5] * len(EDGES), 5.0, False,
                      loglinear_weights=[0.4, 0.7], loglinear=True)
    logits = torch.randn(2, len(split.vocab), generator=torch.Generator().manual_seed(0))
    history = [split.ids[:9].tolist(), split.ids[20:23].tolist()]
    mixed = MixedNext(mixture, counts)(logits, history)
    assert torch.allclose(mixed.exp().sum(-1), torch.ones(2, dtype=mixed.dtype))
    ngram = np.stack([NgramNext(counts, 4)(h)[0] for h in history])
    expected = loglinear_log_probs(torch.log_softmax(logits.double(), -1).numpy(),
                                   np.log(ngram), 0.4, 0.7)
    assert np.allclose(mixed.double().numpy(), expected, atol=1e-6)
