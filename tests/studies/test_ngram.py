"""The Kneser-Ney n-gram: a distribution for every context, the closed form on a known chain."""

import math

import numpy as np
import pytest

from charrnn.studies.ngram import KneserNey, load_split, main, modified_discounts, ngram_codes


def markov_text(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A first-order chain over 4 symbols with a known transition matrix, and that matrix."""
    transitions = np.array([[0.70, 0.10, 0.10, 0.10],
                            [0.05, 0.05, 0.60, 0.30],
                            [0.25, 0.25, 0.25, 0.25],
                            [0.50, 0.00, 0.10, 0.40]])
    rng = np.random.default_rng(seed)
    ids = np.empty(n, dtype=np.int64)
    ids[0] = 0
    draws = rng.random(n)
    cumulative = transitions.cumsum(axis=1)
    for t in range(1, n):
        ids[t] = min(np.searchsorted(cumulative[ids[t - 1]], draws[t]), 3)
    return ids, transitions


def entropy_rate(transitions: np.ndarray) -> tuple[float, float]:
    """(H of the stationary distribution, the chain's entropy rate), in nats."""
    values, vectors = np.linalg.eig(transitions.T)
    pi = np.real(vectors[:, np.argmin(np.abs(values - 1))])
    pi /= pi.sum()
    logs = np.log(np.where(transitions > 0, transitions, 1))
    return float(-(pi * np.log(pi)).sum()), float(-(pi[:, None] * transitions * logs).sum())


def test_perplexity_of_a_known_chain_matches_the_closed_form():
    """On a long text from a first-order chain, the bigram's perplexity is exp(entropy rate)
    and the unigram's exp(H(stationary distribution)): with this much text, smoothing costs
    next to nothing. (The held-out sample itself strays from the expectation by up to about a
    percent; against the true chain's own cross-entropy on it the match is much closer.)"""
    ids, transitions = markov_text(500_000)
    unigram_h, rate = entropy_rate(transitions)
    model = KneserNey(ids[:200_000], 4, max_order=3)
    held_out = np.arange(200_000, len(ids))
    ppl = np.exp(-model.log_probs(ids, held_out).mean(axis=1))
    assert ppl[0] == pytest.approx(math.exp(unigram_h), rel=0.015)
    assert ppl[1] == pytest.approx(math.exp(rate), rel=0.015)
    true_chain = math.exp(-np.log(transitions[ids[held_out - 1], ids[held_out]]).mean())
    assert ppl[1] == pytest.approx(true_chain, rel=0.002)
    assert ppl[2] == pytest.approx(ppl[1], rel=0.002)  # nothing more to learn past order 2


@pytest.mark.parametrize("order", [1, 2, 3, 5, 8])
def test_every_context_gets_a_distribution_that_sums_to_one(order):
    rng = np.random.default_rng(order)
    ids = rng.integers(0, 12, 5_000) % (rng.integers(1, 12, 5_000) + 1)  # skewed, 12 symbols
    model = KneserNey(ids, 12, max_order=8)
    contexts = [ids[100:110], ids[:0], np.array([11, 11, 11, 11, 11, 11, 11, 11]),
                np.array([3]), rng.integers(0, 12, 9)]  # seen, empty, unseen, short, random
    for context in contexts:
        p = model.distribution(context, order)
        assert p.shape == (12,) and (p > 0).all() and p.sum() == pytest.approx(1, abs=1e-9)


def test_codes_and_discounts():
    assert ngram_codes(np.array([1, 2, 3, 0]), 2, 10).tolist() == [12, 23, 30]
    d = modified_discounts(np.array([1] * 50 + [2] * 20 + [3] * 10 + [4] * 5 + [9] * 5))
    assert d[0] == 0 and 0 < d[1] <= 1 and 0 < d[2] <= 2 and 0 < d[3] <= 3


def test_the_command_counts_chooses_on_validation_and_scores_test(tmp_path, capsys):
    from tests.conftest import make_corpus

    corpus = make_corpus(tmp_path / "corpus.txt", n_words=3000)
    result = main(["--corpus", str(corpus), "--max-order", "6"])
    split = load_split(corpus)
    assert len(result["val_ppl_by_order"]) == 6
    assert result["order"] == int(np.argmin(result["val_ppl_by_order"])) + 1
    assert result["test_chars"] == len(split.test) and result["val_chars"] == len(split.val)
    assert "<- chosen" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["--corpus", str(corpus), "--max-order", "11"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path)])
    assert exit_.value.code == 2 and "is not a run folder" in capsys.readouterr().err
