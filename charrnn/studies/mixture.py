"""The network and counting together: p = λ·p_model + (1 − λ)·p_ngram for every character.

The n-gram is the counting baseline of charrnn.studies.ngram (interpolated modified Kneser-Ney,
counted on the run's train split). Its order and λ are chosen on the validation split, then the
test split is scored once. Two mixtures are chosen: one λ for every character, and one λ per
bucket of how often counting saw the character's context (Jelinek-Mercer's bucketing: where
the context is frequent, counting knows more); the bucketed one is used where it gains on
validation. The model reads each split as `generate.py mode=score split=...` does (the state
carried through it); the n-gram's context of a character is the characters before it in the
corpus.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.errors import CharRNNError
from charrnn.studies.ngram import MAX_ORDER, KneserNey, Split, _lookup, ngram_codes, run_split

MIXES = ("none", "ngram")
MIXTURE_FILE = "mixture.json"  # in the run folder: the choices made on validation, per model
WEIGHTS = np.linspace(0.0, 1.0, 101)  # the λ grid searched on validation
# Buckets of a context's count in the train split: 0, 1, 2-3, 4-7, ... 512-1023, 1024 and more.
EDGES = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])


def check_mix(mix: Any, weight: Any, where: str) -> str | None:
    """`mix` (none/null or ngram) and `mix_weight` (null: chosen on validation, or a number in
    [0, 1]); returns "ngram" or None."""
    if mix in (None, "none"):
        return None
    if mix not in MIXES:
        raise CharRNNError(f"mix must be ngram or none, got {mix!r}: ngram mixes the model "
                           f"with the Kneser-Ney counts of its corpus ({where}).")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                               or not 0 <= weight <= 1):
        raise CharRNNError(f"mix_weight must be a number from 0 to 1 (the model's share: 1 is "
                           f"the model alone, 0 counting alone) or null to choose it on the "
                           f"validation split, got {weight!r} ({where}).")
    return mix


@dataclass
class Mixture:
    """What validation chose, and the scores."""

    order: int
    weight: float  # λ: the model's share
    val_ppl: float
    bucket_weights: list[float]  # λ per context-count bucket (EDGES)
    val_ppl_bucketed: float
    bucketed: bool  # whether the bucketed mixture is the one used (it gained on validation)
    # the log-linear mixture p ∝ p_model^a · p_ngram^b, (a, b) fitted on validation; used
    # instead when it scores validation better than both linear ones
    loglinear_weights: list[float] | None = None
    val_ppl_loglinear: float | None = None
    loglinear: bool = False
    test_ppl: float | None = None
    test_ppl_one_weight: float | None = None
    test_ppl_linear: float | None = None  # the better linear one (bucketed or not) on test
    test_ppl_model: float | None = None
    test_ppl_ngram: float | None = None
    arrays: dict | None = field(default=None, repr=False)  # per-character ln p of the test split


def mix_log_probs(model: np.ndarray, ngram: np.ndarray, weight: np.ndarray | float) -> np.ndarray:
    """ln(λ e^model + (1 − λ) e^ngram), λ per character or one for all."""
    weight = np.asarray(weight, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log(weight) + model, np.log1p(-weight) + ngram)


def context_counts(counts: KneserNey, ids: np.ndarray, positions: np.ndarray,
                   order: int) -> np.ndarray:
    """How often the train split holds each position's context (the order - 1 characters before
    it): the count the bucketed λ is chosen by."""
    if order == 1:
        return np.full(len(positions), int(counts.raw[0].counts.sum()))
    codes = ngram_codes(ids, order - 1, counts.base)[positions - (order - 1)]
    level = counts.raw[order - 1]  # order-grams; their contexts are the (order - 1)-grams
    return _lookup(level.contexts, level.totals, codes)


def buckets(counts: np.ndarray) -> np.ndarray:
    return np.searchsorted(EDGES, counts, side="right") - 1


def choose(model_val: np.ndarray, ngram_val: np.ndarray, counts_val: np.ndarray,
           weight: float | None = None) -> Mixture:
    """The order (rows of `ngram_val`: order 1..) and λ that give the lowest validation
    perplexity (λ fixed when `weight` is given), then one λ per bucket at that order."""
    best = (math.inf, 0, 0.0)
    for order, row in enumerate(ngram_val, 1):
        def loss(w: float, row: np.ndarray = row) -> float:
            return -float(mix_log_probs(model_val, row, w).mean())

        if weight is not None:
            best = min(best, (loss(float(weight)), order, float(weight)))
            continue
        # The loss is convex in λ: the best of the 0.01 grid is within 0.1 of the best of the
        # 0.1 grid, so 11 + 21 points find what all 101 would.
        coarse = min(WEIGHTS[::10], key=loss)
        fine = WEIGHTS[np.abs(WEIGHTS - coarse) <= 0.1 + 1e-9]
        best = min(best, *((loss(float(w)), order, float(w)) for w in fine))
    loss, order, chosen = best
    row, group = ngram_val[order - 1], buckets(counts_val[order - 1])
    per_bucket = np.full(len(EDGES), chosen)
    if weight is None:
        sums = np.stack([np.bincount(group, mix_log_probs(model_val, row, w),
                                     minlength=len(EDGES)) for w in WEIGHTS])
        seen = np.bincount(group, minlength=len(EDGES)) > 0
        per_bucket = np.where(seen, WEIGHTS[sums.argmax(axis=0)], chosen)
    bucket_loss = -float(mix_log_probs(model_val, row, per_bucket[group]).mean())
    return Mixture(order, chosen, math.exp(loss), per_bucket.round(2).tolist(),
                   math.exp(bucket_loss), bucket_loss < loss)


def split_log_probs(model, split: Split, positions: np.ndarray) -> np.ndarray:
    """ln p_model(. | the text before) for each character at `positions` (one contiguous run),
    over the vocabulary (N, V); the state carried from the character before the first (as
    generate.py mode=score split=... reads it)."""
    import torch

    from charrnn.generation.sampling import character_log_probs

    ids = torch.from_numpy(split.ids[positions[0] - 1 : positions[-1] + 1])
    return character_log_probs(model, ids.to(next(model.parameters()).device)).numpy()


def ngram_log_probs(counts: KneserNey, order: int, ids: np.ndarray,
                    positions: np.ndarray) -> np.ndarray:
    """ln P_ngram(. | context) over the vocabulary (N, V) for each position (each at least
    order - 1 characters into `ids`), the context the characters before it: NgramNext's
    interpolation for every position at once, one level at a time."""
    base, n = counts.base, len(positions)
    assert positions.min() >= order - 1, "a position without a whole context"
    p = np.full((n, base), 1.0 / base)
    code = np.zeros(n, dtype=np.int64)  # the context's code at this level: m - 1 characters
    for m in range(1, order + 1):
        if m > 1:
            code = ids[positions - (m - 1)] * base ** (m - 2) + code
        level = counts.followers(m == order, m)
        at = np.minimum(np.searchsorted(level.contexts, code), len(level.contexts) - 1)
        seen = np.flatnonzero(level.contexts[at] == code)
        rows = at[seen]
        lo, lengths = level.starts[rows], np.diff(level.starts)[rows]
        # every follower of every seen context, flat: its row in `seen` and its index
        row_of = np.repeat(np.arange(len(seen)), lengths)
        follower = np.repeat(lo - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        mixed = p[seen] * level.back[rows][:, None]
        mixed[row_of, level.chars[follower]] += level.share[follower]
        p[seen] = mixed
    return np.log(p)


def loglinear_log_probs(model: np.ndarray, ngram: np.ndarray, a: float, b: float,
                        targets: np.ndarray | None = None) -> np.ndarray:
    """ln of p ∝ p_model^a · p_ngram^b over the vocabulary (N, V), or at `targets` (N,)."""
    mixed = a * model + b * ngram
    mixed -= np.logaddexp.reduce(mixed, axis=1, keepdims=True)
    return mixed if targets is None else mixed[np.arange(len(targets)), targets]


def fit_loglinear(model: np.ndarray, ngram: np.ndarray, targets: np.ndarray,
                  steps: int = 30) -> tuple[float, float, float]:
    """The exponents (a, b) that maximise the likelihood of `targets`, by Newton's method (the
    loss is convex in them: a log-sum-exp of linear functions, minus a linear one); from the
    model alone (1, 0). Returns a, b and the perplexity."""
    rows = np.arange(len(targets))
    observed = np.array([model[rows, targets].mean(), ngram[rows, targets].mean()])
    w = np.array([1.0, 0.0])

    def loss(w: np.ndarray) -> float:
        return -float(loglinear_log_probs(model, ngram, *w, targets).mean())

    current = loss(w)
    for _ in range(steps):
        p = np.exp(loglinear_log_probs(model, ngram, *w))
        em, en = (p * model).sum(1), (p * ngram).sum(1)
        grad = np.array([em.mean(), en.mean()]) - observed
        cmm = ((p * model * model).sum(1) - em * em).mean()
        cmn = ((p * model * ngram).sum(1) - em * en).mean()
        cnn = ((p * ngram * ngram).sum(1) - en * en).mean()
        step = np.linalg.solve(np.array([[cmm, cmn], [cmn, cnn]]) + 1e-9 * np.eye(2), grad)
        while (new := loss(w - step)) > current and np.abs(step).max() > 1e-9:
            step = step / 2  # damped: never a worse fit
        if new > current:
            break
        w, improved, current = w - step, current - new, new
        if improved < 1e-10:
            break
    return float(w[0]), float(w[1]), math.exp(current)


def check_vocab(split: Split, vocab, run: Path) -> None:
    if split.vocab.chars != vocab.chars:
        raise CharRNNError(
            f"the corpus that {run / 'config.yaml'} names (data.path) is not the one the model "
            "was trained on: its characters differ. Set data.path there to the run's corpus.")


def fingerprint(model, split: Split, weight: float | None) -> str:
    """What a choice on validation depends on: the weights, the corpus and its split, and a λ
    given by hand."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    digest.update(split.ids.tobytes())
    digest.update(repr((split.n_train, split.n_val, weight, MAX_ORDER)).encode())
    return digest.hexdigest()


def _known(run: Path) -> dict:
    try:
        return json.loads((run / MIXTURE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def chosen_on_validation(run: Path, model, split: Split,
                         weight: float | None) -> tuple[Mixture, KneserNey]:
    """The order and λ for this model, and the counts up to that order: from the run's
    mixture.json when this very model, corpus and λ setting were chosen for before; else
    chosen now (the model reads the whole validation split) and written there."""
    key = fingerprint(model, split, weight)
    known = _known(run)
    if key in known:
        mixture = Mixture(**known[key])
        return mixture, KneserNey(split.ids[: split.n_train], len(split.vocab), mixture.order)
    counts = KneserNey(split.ids[: split.n_train], len(split.vocab))
    targets = split.ids[split.val]
    model_full = split_log_probs(model, split, split.val)
    model_val = model_full[np.arange(len(targets)), targets]
    ngram_val = counts.log_probs(split.ids, split.val)
    counts_val = np.stack([context_counts(counts, split.ids, split.val, m)
                           for m in range(1, counts.max_order + 1)])
    mixture = choose(model_val, ngram_val, counts_val, weight)
    if weight is None:  # a λ given by hand asks for the linear mixture
        ngram_full = ngram_log_probs(counts, mixture.order, split.ids, split.val)
        a, b, ppl = fit_loglinear(model_full, ngram_full, targets)
        mixture.loglinear_weights, mixture.val_ppl_loglinear = [round(a, 4), round(b, 4)], ppl
        mixture.loglinear = ppl < min(mixture.val_ppl, mixture.val_ppl_bucketed)
    saved = {k: v for k, v in vars(mixture).items() if not k.startswith("test") and k != "arrays"}
    try:  # a cache: a folder that cannot be written only costs the next run the same time
        (run / MIXTURE_FILE).write_text(
            json.dumps({**dict(list(known.items())[-7:]), key: saved}, indent=2))
    except OSError:
        pass
    return mixture, counts


def mixed_scores(run: Path, model, vocab, weight: float | None = None) -> Mixture:
    """Count the run's train split, choose the order and λ on validation (or read the choice
    from mixture.json), score test once: the model's own perplexity from the same pass."""
    split = run_split(run)
    check_vocab(split, vocab, run)
    mixture, counts = chosen_on_validation(run, model, split, weight)
    targets = split.ids[split.test]
    model_full = split_log_probs(model, split, split.test)
    model_test = model_full[np.arange(len(targets)), targets]
    if mixture.loglinear:  # the n-gram's whole distributions: its own scores among them
        ngram_full = ngram_log_probs(counts, mixture.order, split.ids, split.test)
        ngram_test = ngram_full[np.arange(len(targets)), targets]
    else:
        ngram_test = counts.log_probs(split.ids, split.test)[mixture.order - 1]
    group = buckets(context_counts(counts, split.ids, split.test, mixture.order))
    one = mix_log_probs(model_test, ngram_test, mixture.weight)
    bucketed = mix_log_probs(model_test, ngram_test, np.array(mixture.bucket_weights)[group])
    linear = bucketed if mixture.bucketed else one
    mixed = linear
    if mixture.loglinear:
        mixed = loglinear_log_probs(model_full, ngram_full, *mixture.loglinear_weights, targets)
    mixture.test_ppl_one_weight = math.exp(-float(one.mean()))
    mixture.test_ppl_linear = math.exp(-float(linear.mean()))
    mixture.test_ppl = math.exp(-float(mixed.mean()))
    mixture.test_ppl_model = math.exp(-float(model_test.mean()))
    mixture.test_ppl_ngram = math.exp(-float(ngram_test.mean()))
    mixture.arrays = {"split": split, "model": model_test, "ngram": ngram_test, "mixed": mixed}
    return mixture


def which(mixture: Mixture) -> str:
    """The mixture used, in words."""
    if mixture.loglinear:
        a, b = mixture.loglinear_weights
        return f"log-linear, p ∝ p_model^{a:.2f} · p_ngram^{b:.2f}"
    return "one λ per context-count bucket" if mixture.bucketed else f"λ = {mixture.weight:.2f}"


def describe(mixture: Mixture) -> str:
    """Two lines for the terminal."""
    loglinear = ("" if mixture.val_ppl_loglinear is None
                 else f", log-linear {mixture.val_ppl_loglinear:.4f}")
    return (f"mixed with counting (Kneser-Ney order {mixture.order}, {which(mixture)}, chosen "
            f"on validation): test perplexity {mixture.test_ppl:.4f}; the model alone "
            f"{mixture.test_ppl_model:.4f}, counting alone {mixture.test_ppl_ngram:.4f}\n"
            f"  validation: one λ ({mixture.weight:.2f}) {mixture.val_ppl:.4f}, per bucket "
            f"{mixture.val_ppl_bucketed:.4f}{loglinear}; test with one λ "
            f"{mixture.test_ppl_one_weight:.4f}, the better linear {mixture.test_ppl_linear:.4f}")


def as_metrics(mixture: Mixture) -> dict[str, Any]:
    return {f"mix_{f.name}": getattr(mixture, f.name) for f in fields(mixture)
            if f.name != "arrays"}


def by_group(mixture: Mixture) -> list[dict[str, Any]]:
    """Per group of test characters (charrnn.studies.memory's: line position, word starts,
    name lines, ...): its share, and the bits per character of the model, counting and the
    mixture, read from `mixed_scores`' arrays."""
    import torch

    from charrnn.studies.memory import groups, text_features

    arrays = mixture.arrays
    split = arrays["split"]
    text = split.vocab.decode(torch.from_numpy(split.ids))
    masks = groups({k: v[split.test] for k, v in text_features(text).items()})
    rows = [{"group": "whole test split", "share": 1.0,
             **{k: -float(arrays[k].mean()) / math.log(2) for k in ("model", "ngram", "mixed")}}]
    for name, mask in masks.items():
        if mask.any():
            rows.append({"group": name, "share": float(mask.mean()), **{
                k: -float(arrays[k][mask].mean()) / math.log(2)
                for k in ("model", "ngram", "mixed")}})
    return rows


def add_mixed_test_score(run_dir: Path, checkpoint: str | Path, weight: float | None) -> Mixture:
    """train.py's extra test line (mix=ngram): the mixture's figures added to metrics.json
    (mix_* keys, the network's own test_ppl kept); train.py gives test/ppl_mixed to the
    trackers."""
    from charrnn.generation.loading import load_model
    from charrnn.training.run_folder import METRICS_FILE

    model, vocab = load_model(checkpoint)
    mixture = mixed_scores(run_dir, model, vocab, weight)
    path = run_dir / METRICS_FILE
    metrics = {**json.loads(path.read_text()), **as_metrics(mixture)}
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return mixture


def main(argv: list[str] | None = None) -> list[dict]:
    """`python -m charrnn.studies.mixture <run> [<run> ...]`: each run mixed with counting,
    and where the mixture gains over each part."""
    import argparse

    from charrnn.generation.loading import load_model
    from charrnn.training.run_folder import resolve_checkpoint

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders")
    parser.add_argument("--mix-weight", type=float, help="fix λ (default: chosen on validation)")
    args = parser.parse_args(argv)
    results = []
    try:
        check_mix("ngram", args.mix_weight, "--mix-weight")
        for run in args.runs:
            model, vocab = load_model(resolve_checkpoint(run, "best", key="run"))
            mixture = mixed_scores(run, model, vocab, args.mix_weight)
            rows = by_group(mixture)
            print(f"\n{run}\n{describe(mixture)}")
            print(f"  {'group (bits per character)':<36}{'share':>7}{'model':>8}{'n-gram':>8}"
                  f"{'mixed':>8}{'vs model':>10}{'vs n-gram':>10}")
            for row in rows:
                print(f"  {row['group']:<36}{row['share']:>7.1%}{row['model']:>8.3f}"
                      f"{row['ngram']:>8.3f}{row['mixed']:>8.3f}"
                      f"{row['model'] - row['mixed']:>+10.3f}{row['ngram'] - row['mixed']:>+10.3f}")
            results.append({"run": str(run), **as_metrics(mixture), "groups": rows})
    except CharRNNError as err:
        parser.exit(2, f"error: {err}\n")
    return results



class NgramNext:
    """P(. | context) of the order-`order` Kneser-Ney model over the whole vocabulary, for one
    context at a time, as generation needs it. Interpolation unrolled: P = share_top +
    back_top · (share_below + back_below · (...)), so the distribution is one weighted count
    of each level's followers (a dict lookup per level, no search), plus what is left spread
    uniformly. Equal to KneserNey.distribution, faster."""

    def __init__(self, counts: KneserNey, order: int) -> None:
        self.counts, self.order, self.base = counts, order, counts.base
        self.unigrams = int(counts.raw[0].counts.sum())

    def levels(self, order: int) -> list:
        """From the top down: the order's raw counts, then continuation counts (kept by
        KneserNey.followers)."""
        return [self.counts.followers(m == order, m) for m in range(order, 0, -1)]

    def __call__(self, context: list[int]) -> tuple[np.ndarray, int]:
        """The distribution (V,), and how often the train split holds the context at the top
        order (the bucket of a bucketed λ)."""
        order = min(self.order, len(context) + 1)
        codes, h = [0], 0  # the context's code at orders 1, 2, ...: its last m - 1 characters
        for k in range(1, order):
            h += context[-k] * self.base ** (k - 1)
            codes.append(h)
        chars, shares, weight, seen = [], [], 1.0, 0
        for m, (level, h) in enumerate(zip(self.levels(order), reversed(codes))):
            row = level.index.get(h)
            if row is None:  # an unseen context: the lower order's distribution as it is
                continue
            lo, hi = level.starts[row], level.starts[row + 1]
            chars.append(level.chars[lo:hi])
            shares.append(level.share[lo:hi] * weight)
            weight *= level.back[row]
            seen = int(level.totals[row]) if m == 0 else seen
        p = np.bincount(np.concatenate(chars), np.concatenate(shares), self.base) if chars \
            else np.zeros(self.base)
        return p + weight / self.base, seen


class MixedNext:
    """The callable that generation mixes with (charrnn.generation.sampling.sample_text's
    `mix`): the model's logits (B, V) and each row's characters so far -> ln of the mixed
    distribution (λ by the context's bucket when the mixture is bucketed; the log-linear
    one when validation chose it). Keeps the last
    parts for the caller (`parts`: the model's and the n-gram's probabilities)."""

    def __init__(self, mixture: Mixture, counts: KneserNey) -> None:
        self.next = NgramNext(counts, mixture.order)
        self.weights = (np.array(mixture.bucket_weights) if mixture.bucketed
                        else np.full(len(EDGES), mixture.weight))
        self.loglinear = mixture.loglinear_weights if mixture.loglinear else None
        self.parts: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, logits, history: list[list[int]]):
        import torch

        model = torch.softmax(logits.double(), dim=-1).cpu().numpy()
        rows = [self.next(h) for h in history]
        ngram = np.stack([p for p, _ in rows])
        self.parts = (model, ngram)
        if self.loglinear is not None:
            logp = torch.log_softmax(logits.double(), dim=-1).cpu().numpy()
            return torch.from_numpy(loglinear_log_probs(logp, np.log(ngram),
                                                        *self.loglinear)).to(logits)
        weight = self.weights[buckets(np.array([seen for _, seen in rows]))][:, None]
        with np.errstate(divide="ignore"):
            return torch.from_numpy(np.log(weight * model + (1 - weight) * ngram)).to(logits)


def prepare_mixture(run: Path, model, vocab, weight: float | None) -> tuple[Mixture, KneserNey]:
    """For generation: the run's counts, and the order and λ chosen on its validation split
    (no test scoring)."""
    split = run_split(run)
    check_vocab(split, vocab, run)
    return chosen_on_validation(run, model, split, weight)


if __name__ == "__main__":
    main()
