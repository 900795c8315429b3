"""The counting baseline: an interpolated modified Kneser-Ney character n-gram.

    python -m charrnn.studies.ngram                      # Tiny Shakespeare, orders 1..10
    python -m charrnn.studies.ngram outputs/<date>/<time> # a run's corpus and split

Counts on the train split, picks the order on validation, and scores validation and test as
the project scores a model: the same contiguous 80/10/10 split, every character of a split
predicted once, perplexity = exp(mean cross-entropy over those characters). A character's
context is the characters before it in the corpus (the n-gram needs no state).

Modified Kneser-Ney (Chen and Goodman, 1998), interpolated: at the highest order raw counts,
below it continuation counts (how many different characters come before an n-gram), three
discounts per order (for counts 1, 2 and 3+) from the counts of counts, and the unigram level
interpolated with the uniform distribution, so that an unseen character keeps some
probability. Counted with numpy: every n-gram of up to 10 characters is one int64 code
(65^10 < 2^63), and counting is a sort. docs/memory.md says why not a library.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from charrnn.data.corpus import split_sizes, tinyshakespeare_path
from charrnn.data.vocab import CharVocab, read_text
from charrnn.errors import CharRNNError

MAX_ORDER = 10


def ngram_codes(ids: np.ndarray, n: int, base: int) -> np.ndarray:
    """The code of every n-gram of `ids` (len - n + 1,): sum of ids[i + k] * base^(n-1-k)."""
    codes = np.zeros(len(ids) - n + 1, dtype=np.int64)
    for k in range(n):
        codes = codes * base + ids[k : len(ids) - n + 1 + k]
    return codes


@dataclass
class _Level:
    """The counts of one order, raw or continuation, and what the formula needs of them."""

    keys: np.ndarray  # sorted n-gram codes
    counts: np.ndarray
    contexts: np.ndarray  # sorted context codes (n-gram code // base)
    totals: np.ndarray  # per context: the sum of its n-grams' counts
    n1: np.ndarray  # per context: followers seen once, twice, three times or more
    n2: np.ndarray
    n3: np.ndarray
    discounts: np.ndarray  # (4,): D(0) = 0, D(1), D(2), D(3+)

    @classmethod
    def build(cls, keys: np.ndarray, counts: np.ndarray, base: int) -> _Level:
        contexts, starts = np.unique(keys // base, return_index=True)

        def per_context(values: np.ndarray) -> np.ndarray:
            return np.add.reduceat(values, starts) if len(values) else values

        return cls(keys, counts, contexts, per_context(counts),
                   per_context((counts == 1).astype(np.int64)),
                   per_context((counts == 2).astype(np.int64)),
                   per_context((counts >= 3).astype(np.int64)), modified_discounts(counts))


@dataclass
class Followers:
    """One level laid out for one context at a time: P(w | h) = share(h, w) + back(h) ·
    P(w | shorter h), share = max(count - D(count), 0) / total, back = discounted mass / total."""

    contexts: np.ndarray  # the rows' context codes, sorted
    starts: np.ndarray  # (contexts + 1,): the followers of row i are [starts[i], starts[i + 1])
    chars: np.ndarray  # per follower: its character
    share: np.ndarray  # per follower
    back: np.ndarray  # per context
    totals: np.ndarray  # per context

    @classmethod
    def build(cls, level: _Level, base: int) -> Followers:
        starts = np.append(np.searchsorted(level.keys, level.contexts * base), len(level.keys))
        rows = np.repeat(np.arange(len(level.contexts)), np.diff(starts))
        d, totals = level.discounts, level.totals.astype(np.float64)
        share = np.maximum(level.counts - d[np.minimum(level.counts, 3)], 0) / totals[rows]
        back = (d[1] * level.n1 + d[2] * level.n2 + d[3] * level.n3) / totals
        return cls(level.contexts, starts, level.keys % base, share, back, level.totals)

    @cached_property
    def index(self) -> dict[int, int]:
        """Context code -> its row: one dictionary lookup per step of generation."""
        return dict(zip(self.contexts.tolist(), range(len(self.contexts))))


def modified_discounts(counts: np.ndarray) -> np.ndarray:
    """Chen and Goodman's estimates: Y = n1 / (n1 + 2 n2), D_k = k - (k+1) Y n_{k+1} / n_k,
    each kept within [0, k] (so that no count goes below zero)."""
    n = [int((counts == k).sum()) for k in range(1, 5)]
    if n[0] == 0 or n[1] == 0:
        return np.array([0.0, 0.5, 1.0, 1.5])
    y = n[0] / (n[0] + 2 * n[1])
    d = [k - (k + 1) * y * n[k] / n[k - 1] if n[k - 1] else k / 2 for k in (1, 2, 3)]
    return np.array([0.0, *(min(max(v, 0.0), k) for k, v in zip((1, 2, 3), d))])


def _lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """values[keys == query] for each query, 0 where a query is not a key."""
    if len(keys) == 0:
        return np.zeros(len(queries), dtype=values.dtype)
    at = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return np.where(keys[at] == queries, values[at], 0)


class KneserNey:
    """An interpolated modified Kneser-Ney model of every order up to `max_order`, counted on
    `ids` (the train split, encoded) over a vocabulary of `vocab_size` characters."""

    def __init__(self, ids: np.ndarray, vocab_size: int, max_order: int = MAX_ORDER) -> None:
        if not 1 <= max_order <= MAX_ORDER:
            raise CharRNNError(f"the n-gram order must be 1..{MAX_ORDER}, got {max_order}.")
        self.base, self.max_order = vocab_size, max_order
        ids = np.asarray(ids, dtype=np.int64)
        self._followers: dict[tuple[bool, int], Followers] = {}
        self.raw: list[_Level] = []  # raw[m - 1]: counts of m-grams (an order-m model's top)
        self.cont: list[_Level] = []  # cont[m - 1]: continuation counts (below the top)
        unique = [np.unique(ngram_codes(ids, m, self.base), return_counts=True)
                  for m in range(1, max_order + 1)]
        for m in range(1, max_order + 1):
            keys, counts = unique[m - 1]
            self.raw.append(_Level.build(keys, counts, self.base))
            # N1+(. w): distinct characters seen before the m-gram w, from the (m+1)-grams
            # (the top order needs none: nothing is built on it)
            longer = unique[m][0] if m < max_order else np.empty(0, np.int64)
            suffixes, left = np.unique(longer % self.base ** m, return_counts=True)
            self.cont.append(_Level.build(suffixes, left, self.base))

    def followers(self, top: bool, m: int) -> Followers:
        """Order m's level (raw counts where `top`, else continuation counts) for one context
        at a time, as generation looks it up: built on first use, then kept."""
        if (top, m) not in self._followers:
            level = self.raw[m - 1] if top else self.cont[m - 1]
            self._followers[top, m] = Followers.build(level, self.base)
        return self._followers[top, m]

    def _level_probs(self, level: _Level, codes: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """P(w | h) at one level for n-gram codes (h, w), given P(w | shorter h): discounted
        counts, and the discounted mass spread by the lower order."""
        count = _lookup(level.keys, level.counts, codes)
        contexts = codes // self.base
        total = _lookup(level.contexts, level.totals, contexts).astype(np.float64)
        d = level.discounts
        mass = (d[1] * _lookup(level.contexts, level.n1, contexts)
                + d[2] * _lookup(level.contexts, level.n2, contexts)
                + d[3] * _lookup(level.contexts, level.n3, contexts))
        discounted = np.maximum(count - d[np.minimum(count, 3)], 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = (discounted + mass * lower) / total
        return np.where(total > 0, p, lower)

    def log_probs(self, ids: np.ndarray, positions: np.ndarray,
                  starts: np.ndarray | int = 0) -> np.ndarray:
        """ln P(ids[t] | the characters before t) for each t in `positions`, for every order:
        an array (max_order, len(positions)); row m - 1 is the order-m model. `starts`: where
        each position's text begins (its context goes no further back)."""
        ids = np.asarray(ids, dtype=np.int64)
        positions = np.asarray(positions)
        lower = np.full(len(positions), 1.0 / self.base)  # order 0: uniform
        top = lower
        rows = []
        codes = np.zeros(len(positions), dtype=np.int64)
        for m in range(1, self.max_order + 1):
            back = positions - (m - 1)  # the m-gram ids[t-m+1 .. t]
            ok = back >= starts  # near the start of a text there is no m-gram: keep m - 1
            codes = np.where(ok, ids[np.where(ok, back, 0)] * self.base ** (m - 1) + codes,
                             codes)
            top = np.where(ok, self._level_probs(self.raw[m - 1], codes, lower), top)
            rows.append(np.log(top))
            lower = np.where(ok, self._level_probs(self.cont[m - 1], codes, lower), lower)
        return np.stack(rows)

    def distribution(self, context: np.ndarray, order: int) -> np.ndarray:
        """P(. | context) over the whole vocabulary (V,), for the order-`order` model."""
        context = np.asarray(context, dtype=np.int64)[-(order - 1):] if order > 1 else \
            np.empty(0, np.int64)
        width = len(context) + 1  # one row per character: the context, then the character
        ids = np.concatenate([np.repeat(context[None], self.base, axis=0),
                              np.arange(self.base)[:, None]], axis=1).ravel()
        positions = np.arange(len(context), len(ids), width)
        return np.exp(self.log_probs(ids, positions, positions - len(context))[order - 1])


@dataclass
class Split:
    """A corpus encoded, and where its train, validation and test characters are."""

    ids: np.ndarray
    vocab: CharVocab
    n_train: int
    n_val: int

    @property
    def val(self) -> np.ndarray:
        return np.arange(self.n_train, self.n_train + self.n_val)

    @property
    def test(self) -> np.ndarray:
        return np.arange(self.n_train + self.n_val, len(self.ids))


def load_split(path: Path, val_fraction: float = 0.1, test_fraction: float = 0.1) -> Split:
    """The corpus at `path`, split as the DataModule splits it (vocabulary of the whole text)."""
    text = read_text(path)
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text).numpy().astype(np.int64)
    n_train, n_val, _ = split_sizes(len(ids), val_fraction, test_fraction)
    return Split(ids, vocab, n_train, n_val)


def run_split(run: Path) -> Split:
    """The corpus and split of a run folder, from its config.yaml."""
    from omegaconf import OmegaConf

    config = run / "config.yaml"
    if not config.is_file():
        raise CharRNNError(f"{run} is not a run folder (no config.yaml in it): give a folder "
                           "train.py wrote, e.g. outputs/2026-01-01/12-00-00.")
    data = OmegaConf.load(config).data
    path = Path(data.path).expanduser() if data.path else tinyshakespeare_path(data.cache_dir)
    if not path.is_file():  # the corpus moved since the run
        raise CharRNNError(
            f"the corpus of the run in {run} is not at {path}, where data.path (or "
            f"data.cache_dir) of {config} points. Put the corpus back there, or set data.path "
            "in that file to where it is now.")
    return load_split(path, data.val_fraction, data.test_fraction)


def perplexity(log_probs: np.ndarray) -> float:
    return math.exp(-float(np.mean(log_probs)))


def baseline(split: Split, max_order: int = MAX_ORDER) -> tuple[dict, KneserNey]:
    """Count, choose the order on validation, score test: the figures the command prints, and
    the model (every order up to `max_order`: row `order - 1` of its log_probs)."""
    start = time.perf_counter()
    model = KneserNey(split.ids[: split.n_train], len(split.vocab), max_order)
    counted = time.perf_counter() - start
    val = model.log_probs(split.ids, split.val)
    val_ppl = [perplexity(row) for row in val]
    order = int(np.argmin(val_ppl)) + 1
    test = model.log_probs(split.ids, split.test)[order - 1]
    return {"order": order, "val_ppl": val_ppl[order - 1], "test_ppl": perplexity(test),
            "val_ppl_by_order": val_ppl, "train_chars": split.n_train,
            "val_chars": len(split.val), "test_chars": len(split.test),
            "count_s": round(counted, 2),
            "total_s": round(time.perf_counter() - start, 2)}, model


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?",
                        help="a run folder: its corpus and split (default: Tiny Shakespeare)")
    parser.add_argument("--corpus", type=Path, help="a text file, split 80/10/10")
    parser.add_argument("--max-order", type=int, default=MAX_ORDER)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        if args.run is not None:
            split = run_split(args.run)
        else:
            from charrnn.training.run_folder import train_config

            corpus = args.corpus or tinyshakespeare_path(train_config().data.cache_dir)
            split = load_split(corpus)
        result, _ = baseline(split, args.max_order)
    except CharRNNError as err:
        parser.exit(2, f"error: {err}\n")
    for m, ppl in enumerate(result["val_ppl_by_order"], 1):
        print(f"order {m:>2}: val ppl {ppl:.4f}{'  <- chosen' if m == result['order'] else ''}")
    print(f"interpolated modified Kneser-Ney, order {result['order']} (chosen on validation): "
          f"val ppl {result['val_ppl']:.4f}, test ppl {result['test_ppl']:.4f} over "
          f"{result['test_chars']:,} test characters; counted {result['train_chars']:,} "
          f"characters in {result['count_s']} s, {result['total_s']} s in all")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
