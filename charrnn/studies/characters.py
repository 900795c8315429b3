"""What the characters became: each character's learned input vector, compared.

    python -m charrnn.studies.characters outputs/<date>/<time> [more runs] --pictures docs

A one-hot model learns an embedding too: a one-hot vector times W_ih selects a column of it,
so column c of the first layer's input matrix (all gates of an LSTM or GRU) is what character
c became; `model.input=embedding` (and the Transformer) learn a table of them directly. For
each run this reads those vectors and reports, beside the same for an untrained model of the
same shape (what training did):

- each character's nearest characters by cosine similarity;
- case pairs: the mean similarity of a letter and its other case (R, r) against random pairs
  of letters;
- classes (vowels, consonants, digits, punctuation, whitespace): the mean similarity within a
  class minus that between classes, against the same with the classes' labels shuffled (a
  permutation baseline: z and the share of shuffles that do as well);
- a picture: the vectors' two principal components, each character drawn as itself, coloured
  by its class.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charrnn.errors import CharRNNError
from charrnn.generation.loading import load_checkpoint, load_model
from charrnn.models.registry import CharModel, build_model
from charrnn.training.run_folder import resolve_checkpoint

CLASSES = ("vowel", "consonant", "digit", "punctuation", "whitespace")
COLOURS = {"vowel": "#d62728", "consonant": "#1f77b4", "digit": "#2ca02c",
           "punctuation": "#9467bd", "whitespace": "#7f7f7f", "other": "#8c564b"}
SHUFFLES = 1000
NEAREST = 5


def char_class(c: str) -> str:
    if c.lower() in "aeiou":
        return "vowel"
    if c.isalpha():
        return "consonant"
    if c.isdigit():
        return "digit"
    if c.isspace():
        return "whitespace"
    if c in string.punctuation or not c.isalnum():
        return "punctuation"
    return "other"


def character_vectors(model: CharModel) -> np.ndarray:
    """(V, D): each character's learned input vector (see the module's docstring)."""
    embedding = getattr(model, "embedding", None)
    if embedding is not None:
        return embedding.weight.detach().double().cpu().numpy()
    return model.rnn.weight_ih_l0.detach().double().cpu().numpy().T  # columns: (V, G*H)


def cosine(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def nearest(similarity: np.ndarray, chars: str, k: int = NEAREST) -> dict[str, list]:
    """Each character's k most similar others, with the similarity."""
    found = {}
    for i, c in enumerate(chars):
        order = [j for j in np.argsort(-similarity[i]) if j != i][:k]
        found[c] = [[chars[j], round(float(similarity[i, j]), 3)] for j in order]
    return found


def case_pairs(similarity: np.ndarray, chars: str, rng: np.random.Generator) -> dict[str, Any]:
    """Mean similarity of (upper, lower) pairs against random pairs of distinct letters."""
    index = {c: i for i, c in enumerate(chars)}
    pairs = [(index[c], index[c.lower()]) for c in chars if c.isupper() and c.lower() in index]
    letters = [i for i, c in enumerate(chars) if c.isalpha()]
    if not pairs or len(letters) < 3:
        return {"pairs": 0}
    random_pairs = rng.choice(letters, size=(4000, 2))
    random_pairs = random_pairs[random_pairs[:, 0] != random_pairs[:, 1]]
    case = float(np.mean([similarity[a, b] for a, b in pairs]))
    base = float(similarity[random_pairs[:, 0], random_pairs[:, 1]].mean())
    return {"pairs": len(pairs), "case_pair_similarity": case, "random_pair_similarity": base,
            "difference": case - base}


def separation(similarity: np.ndarray, labels: np.ndarray) -> float:
    """Mean similarity within a class minus between classes (characters of a class of one,
    and the diagonal, left out)."""
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    return float(similarity[same & off].mean() - similarity[~same].mean())


def class_separation(similarity: np.ndarray, chars: str, rng: np.random.Generator,
                     shuffles: int = SHUFFLES) -> dict[str, Any]:
    """separation() of the classes, and of `shuffles` random relabellings (same class sizes)."""
    labels = np.array([char_class(c) for c in chars])
    observed = separation(similarity, labels)
    shuffled = np.array([separation(similarity, rng.permutation(labels))
                         for _ in range(shuffles)])
    return {"separation": observed, "shuffled_mean": float(shuffled.mean()),
            "shuffled_sd": float(shuffled.std()),
            "z": float((observed - shuffled.mean()) / max(shuffled.std(), 1e-12)),
            "p": float((np.sum(shuffled >= observed) + 1) / (shuffles + 1)),
            "by_class": {c: _within(similarity, labels, c) for c in CLASSES
                         if (labels == c).sum() > 1}}


def _within(similarity: np.ndarray, labels: np.ndarray, name: str) -> float:
    member = labels == name
    block = similarity[np.ix_(member, member)]
    return float((block.sum() - np.trace(block)) / (member.sum() * (member.sum() - 1)))


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def measure(model: CharModel, chars: str, seed: int = 0) -> dict[str, Any]:
    """Everything the report prints for one model."""
    vectors = character_vectors(model)
    similarity = cosine(vectors)
    rng = np.random.default_rng(seed)
    return {"nearest": nearest(similarity, chars), "case": case_pairs(similarity, chars, rng),
            "classes": class_separation(similarity, chars, rng),
            "points": [[c, *map(float, xy), char_class(c)]
                       for c, xy in zip(chars, pca_2d(vectors).round(4))]}


def analyse(run: Path) -> dict[str, Any]:
    """A run's characters, trained and untrained (the same shape, seed 0)."""
    checkpoint = resolve_checkpoint(run, "best", key="run")
    model, vocab = load_model(checkpoint)
    settings = load_checkpoint(checkpoint)["hyper_parameters"]["model"]
    torch.manual_seed(0)
    untrained = build_model(len(vocab), **settings).eval()
    kind = "embedding table" if getattr(model, "embedding", None) is not None else (
        "columns of the first layer's W_ih")
    return {"run": str(run), "cell": settings.get("cell", "rnn"),
            "input": settings.get("input", "onehot"), "vectors": kind,
            "trained": measure(model, vocab.chars), "untrained": measure(untrained, vocab.chars)}


def shown(c: str) -> str:
    return {"\n": "\\n", " ": "␣", "\t": "\\t"}.get(c, c)


def picture(result: dict[str, Any], path: Path) -> Path:
    """The trained and untrained characters side by side, each drawn as itself."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2))
    for ax, which in zip(axes, ("trained", "untrained")):
        points = result[which]["points"]
        xs, ys = np.array([p[1] for p in points]), np.array([p[2] for p in points])
        ax.scatter(xs, ys, s=0)
        for c, x, y, cls in points:
            ax.text(x, y, shown(c), color=COLOURS[cls], ha="center", va="center", fontsize=11,
                    fontfamily="monospace", fontweight="bold")
        pad = 0.05 * max(np.ptp(xs), np.ptp(ys), 1e-9)
        ax.set_xlim(xs.min() - pad, xs.max() + pad)
        ax.set_ylim(ys.min() - pad, ys.max() + pad)
        sep = result[which]["classes"]
        ax.set_title(f"{which}: class separation {sep['separation']:+.3f} "
                     f"(shuffled {sep['shuffled_mean']:+.3f}, z {sep['z']:.1f})", fontsize=10)
        ax.set_xlabel("first principal component")
        ax.set_ylabel("second principal component")
    handles = [plt.Line2D([], [], marker="s", ls="", color=COLOURS[c], label=c) for c in CLASSES]
    fig.legend(handles=handles, loc="lower center", ncol=len(CLASSES), frameon=False)
    fig.suptitle(f"What the characters became: {result['cell']}, {result['input']} input "
                 f"({result['vectors']}), {Path(result['run']).name}")
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(result: dict[str, Any], show: str = "aeR:") -> None:
    print(f"\n{result['run']}: {result['cell']}, {result['input']} input, vectors: "
          f"{result['vectors']}")
    for which in ("trained", "untrained"):
        r = result[which]
        near = "; ".join(f"{shown(c)} -> " + " ".join(f"{shown(n)} {s:.2f}" for n, s in
                                                       r["nearest"][c][:3])
                         for c in show if c in r["nearest"])
        case, sep = r["case"], r["classes"]
        print(f"  {which:<9} nearest: {near}")
        if case.get("pairs"):
            print(f"  {'':<9} case pairs ({case['pairs']}): {case['case_pair_similarity']:+.3f} "
                  f"against random letter pairs {case['random_pair_similarity']:+.3f}")
        by_class = ", ".join(f"{c} {v:+.3f}" for c, v in sep["by_class"].items())
        print(f"  {'':<9} classes: within - between {sep['separation']:+.3f} (shuffled "
              f"{sep['shuffled_mean']:+.3f} ± {sep['shuffled_sd']:.3f}, z {sep['z']:.1f}, "
              f"p {sep['p']:.3f}); within: {by_class}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders")
    parser.add_argument("--pictures", type=Path,
                        help="write <folder>/characters_<run name>.png for each run")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    results = []
    try:
        for run in args.runs:
            result = analyse(run)
            report(result)
            if args.pictures:
                args.pictures.mkdir(parents=True, exist_ok=True)
                path = picture(result, args.pictures / f"characters_{run.name}.png")
                print(f"  wrote {path}")
            results.append(result)
    except CharRNNError as err:
        parser.exit(2, f"error: {err}\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
