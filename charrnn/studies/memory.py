"""Inside the memory: where a trained model beats counting, and which hidden units carry what.

    python -m charrnn.studies.memory RUN [RUN ...] [--pictures docs/]

For each run (its best checkpoint, its corpus and split):

- against counting: every test character's loss under the model (scored as the test split is
  scored in training: windows of data.seq_length, the state starting afresh in each) minus its
  loss under the Kneser-Ney n-gram (charrnn.studies.ngram), grouped by what the text is doing
  there: how far into its line, inside quotes or brackets, a word's first character, a speaker's
  name line, the character after a name's colon;
- which units (recurrent cells): the hidden state of every layer (an LSTM's cell state too)
  while reading part of the test split, each unit correlated with features of the text itself;
  the best unit per feature beside the best of an untrained model of the same shape;
- saturation: the share of units with |h| > 0.99 at a step, averaged over the text.

Each run folder gets memory.json (what the page's memory view suggests); --pictures writes a
test passage shaded by the difference (vs_counting.png) and by the best line-position unit
(line_unit.png), for the first run. docs/memory.md explains the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from charrnn.data.windows import IGNORE_INDEX, EvalWindows
from charrnn.errors import CharRNNError
from charrnn.generation.loading import load_checkpoint, load_model
from charrnn.models.registry import CharModel, build_model, initial_state
from charrnn.studies.ngram import KneserNey, Split, baseline, run_split
from charrnn.training.run_folder import resolve_checkpoint

SATURATED = 0.99  # |h| above this: a tanh unit at the end of its range
UNIT_CHARS = 32_000  # characters of the test split read to correlate units with features
CHUNKS = 32  # ... read as this many contiguous pieces side by side
WARMUP = 50  # first steps of each piece left out: the state has read nothing yet
NAME_LINE = re.compile(r"[A-Z][A-Za-z' ]*:")  # a speaker's line, e.g. "First Citizen:"


# ---- what the text is doing at each character ----

def text_features(text: str) -> dict[str, np.ndarray]:
    """Per character of `text`, from the text alone: line_position (characters since the last
    newline), in_quotes_or_brackets, word_start, name_line (a speaker's name line after an
    empty line, colon included), after_name_colon (the character after that colon),
    upper_run (a capital beside another capital), sentence_end (. ! or ?)."""
    n = len(text)
    line_position = np.zeros(n, dtype=np.int64)
    name_line = np.zeros(n, dtype=bool)
    after_colon = np.zeros(n, dtype=bool)
    start, previous_empty = 0, True
    for line in text.split("\n"):
        end = start + len(line)
        stop = min(end + 1, n)  # the line and its newline (the last line may have none)
        line_position[start:stop] = np.arange(stop - start)
        if previous_empty and NAME_LINE.fullmatch(line):
            name_line[start:end] = True
            if end < n:
                after_colon[end] = True
        previous_empty, start = line == "", end + 1
    chars = np.array(list(text))
    letters = np.char.isalpha(chars)
    upper = np.char.isupper(chars)
    before = np.concatenate([[False], letters[:-1]])
    word_start = letters & ~before
    upper_run = upper & (np.concatenate([[False], upper[:-1]]) | np.concatenate([upper[1:],
                                                                                 [False]]))
    depth, quoted, inside = 0, False, np.zeros(n, dtype=bool)
    for i, c in enumerate(text):  # brackets nest; double quotes toggle; the marks are outside
        before = depth > 0 or quoted
        if c in "([{":
            depth += 1
        elif c in ")]}" and depth:
            depth -= 1
        elif c == '"':
            quoted = not quoted
        inside[i] = before and (depth > 0 or quoted)
    return {"line_position": line_position, "in_quotes_or_brackets": inside,
            "word_start": word_start, "name_line": name_line, "after_name_colon": after_colon,
            "upper_run": upper_run, "sentence_end": np.isin(chars, [".", "!", "?"])}


LINE_BUCKETS = ((0, 0), (1, 9), (10, 19), (20, 39), (40, 10**9))
FLAGS = ("in_quotes_or_brackets", "word_start", "name_line", "after_name_colon")


def groups(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The groups of characters the comparison reports (masks; the flags overlap)."""
    line = features["line_position"]
    found = {f"line position {lo}" if lo == hi else
             (f"line position {lo}+" if hi > 10**8 else f"line position {lo}-{hi}"):
             (line >= lo) & (line <= hi) for lo, hi in LINE_BUCKETS}
    found.update({name.replace("_", " "): features[name] for name in FLAGS})
    return found


# ---- losses: the model as the test split is scored, and the n-gram ----

@dataclass
class RunData:
    run: Path
    model: CharModel
    settings: dict
    split: Split
    seq_length: int


def load_run(run: Path) -> RunData:
    if not (run / "config.yaml").is_file():
        raise CharRNNError(f"{run} is not a run folder (no config.yaml in it): give folders "
                           "train.py wrote, e.g. outputs/2026-01-01/12-00-00.")
    best = resolve_checkpoint(run, "best", key="run")
    model, vocab = load_model(best)
    split = run_split(run)
    if split.vocab != vocab:
        raise CharRNNError(f"the corpus of {run} is not the one it was trained on (another "
                           "vocabulary): put data.path of its config.yaml back.")
    settings = load_checkpoint(best)["hyper_parameters"]["model"]
    cfg = OmegaConf.load(run / "config.yaml")
    return RunData(run, model, settings, split, int(cfg.data.seq_length))


@torch.inference_mode()
def window_losses(model: CharModel, ids: np.ndarray, start: int, end: int, seq_length: int,
                  batch: int = 64) -> np.ndarray:
    """Each target's loss (nats) for ids[start:end], scored in windows of `seq_length` with the
    state starting afresh in each (as validation and test are scored in training)."""
    windows = EvalWindows(torch.from_numpy(ids), start, end, seq_length)
    losses = np.empty(end - start)
    for first in range(0, len(windows), batch):
        index = list(range(first, min(first + batch, len(windows))))
        x, y = windows.__getitems__(index)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(),
                               ignore_index=IGNORE_INDEX, reduction="none").view(y.shape)
        offsets = torch.tensor(index)[:, None] * seq_length + torch.arange(seq_length)
        valid = y != IGNORE_INDEX
        losses[offsets[valid].numpy()] = loss[valid].double().numpy()
    return losses


def compare(losses: np.ndarray, ngram: np.ndarray, masks: dict[str, np.ndarray]) -> list[dict]:
    """Per group: its share of the characters, the mean loss of each (bits), the difference
    n-gram - model (bits per character: positive where the model wins), and the group's
    contribution to the whole difference (bits per character of the whole split)."""
    gain = (ngram - losses) / math.log(2)
    total = gain.mean()
    rows = []
    for name, mask in masks.items():
        count = int(mask.sum())
        row = {"group": name, "chars": count, "share": count / len(mask)}
        if count:
            contribution = gain[mask].sum() / len(mask)
            row.update(model_bits=losses[mask].mean() / math.log(2),
                       ngram_bits=ngram[mask].mean() / math.log(2),
                       gain_bits=gain[mask].mean(), contribution=contribution,
                       share_of_gain=contribution / total if total else math.nan)
        rows.append(row)
    return rows


# ---- hidden units ----

@torch.inference_mode()
def hidden_states(model: CharModel, ids: np.ndarray, chunks: int = CHUNKS
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The recurrent state after every character of `ids`, read as `chunks` contiguous pieces
    side by side: {"layer 0 h": (N, H), ..., "layer 0 c": ...} (N = the characters kept, each
    piece's first WARMUP left out) and the positions in `ids` they belong to."""
    chunks = max(1, min(chunks, len(ids) // (4 * WARMUP)))  # a short text: fewer pieces
    length = len(ids) // chunks
    if length <= WARMUP:
        raise CharRNNError(f"{len(ids)} characters are too few to read the hidden state: "
                           f"give more than {WARMUP}.")
    x = torch.from_numpy(ids[: length * chunks].reshape(chunks, length))
    inputs, state = model.embed(x), initial_state(model, chunks)
    kinds = ("h", "c") if isinstance(state, tuple) else ("h",)
    steps: list[list[torch.Tensor]] = []
    for t in range(length):
        _, state = model.rnn(inputs[:, t : t + 1], state)
        steps.append([s.clone() for s in (state if isinstance(state, tuple) else (state,))])
    found = {}
    for k, kind in enumerate(kinds):
        stacked = torch.stack([s[k] for s in steps[WARMUP:]])  # (T, layers, chunks, H)
        for layer in range(stacked.shape[1]):
            found[f"layer {layer} {kind}"] = (stacked[:, layer].transpose(0, 1)
                                                .reshape(-1, stacked.shape[-1]).float().numpy())
    positions = (np.arange(chunks)[:, None] * length + np.arange(WARMUP, length)).ravel()
    return found, positions


def correlations(states: dict[str, np.ndarray], features: dict[str, np.ndarray]) -> dict:
    """For each feature, the unit whose activation correlates most with it (Pearson r)."""
    best = {}
    for feature, values in features.items():
        f = values.astype(np.float64)
        if f.std() == 0:
            best[feature] = None  # the text never shows it (no brackets in Tiny Shakespeare)
            continue
        f = (f - f.mean()) / f.std()
        top = None
        for name, acts in states.items():
            a = acts.astype(np.float64)
            std = a.std(axis=0)
            r = np.where(std > 0, (f @ (a - a.mean(axis=0))) / (len(f) * np.where(std > 0, std,
                                                                                 1)), 0)
            unit = int(np.abs(r).argmax())
            if top is None or abs(r[unit]) > abs(top["r"]):
                layer, kind = int(name.split()[1]), name.split()[2]
                top = {"layer": layer, "kind": kind, "unit": unit, "r": float(r[unit])}
        best[feature] = top
    return best


def saturation(states: dict[str, np.ndarray]) -> float:
    """The share of hidden units (h, every layer) with |h| > SATURATED, over every step."""
    hs = [a for name, a in states.items() if name.endswith(" h")]
    return float(np.mean([np.mean(np.abs(a) > SATURATED) for a in hs]))


def untrained_like(data: RunData) -> CharModel:
    torch.manual_seed(0)
    return build_model(len(data.split.vocab), **data.settings).eval()


# ---- pictures ----

def shaded_passage(text: str, values: np.ndarray, path: Path, title: str, cmap: str,
                   limits: tuple[float, float], legend: str) -> None:
    """A passage drawn character by character, each on a background of its value's colour."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    lines = text.split("\n")
    width = max(len(line) for line in lines) + 1
    fig = Figure(figsize=(0.105 * width + 0.4, 0.22 * len(lines) + 0.9), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-1, width + 1)
    ax.set_ylim(len(lines) + 1.0, -2.8)
    ax.set_axis_off()
    colour, norm = colormaps[cmap], Normalize(*limits)
    i = 0
    for row, line in enumerate(lines):
        for col, ch in enumerate(line + "\n"):
            if i >= len(values):
                break
            ax.add_patch(_cell(col, row, colour(norm(values[i]), alpha=0.85)))
            if ch != "\n":
                ax.text(col + 0.5, row + 0.5, ch, ha="center", va="center", family="monospace",
                        fontsize=8)
            i += 1
    ax.text(0, -2.0, title, fontsize=8, va="center")
    ax.text(0, -1.0, legend, fontsize=7, va="center", color="0.35")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def _cell(col: int, row: int, colour):
    from matplotlib.patches import Rectangle

    return Rectangle((col, row), 1, 1, facecolor=colour, edgecolor="none")


# ---- the report ----

def analyse(run: Path, ngram_model: KneserNey | None = None, order: int | None = None) -> dict:
    """Everything the report prints for one run (and memory.json holds)."""
    data = load_run(run)
    split = data.split
    if ngram_model is None:
        counted, ngram_model = baseline(split)
        order = counted["order"]
    test = split.test
    model_losses = window_losses(data.model, split.ids, test[0], test[-1] + 1, data.seq_length)
    ngram_losses = -ngram_model.log_probs(split.ids, test)[order - 1]
    text = split.vocab.decode(torch.from_numpy(split.ids))
    features = text_features(text)
    test_features = {k: v[test] for k, v in features.items()}
    result = {"run": str(run), "model_test_ppl": math.exp(model_losses.mean()),
              "ngram_order": order, "ngram_test_ppl": math.exp(ngram_losses.mean()),
              "gain_bits": float((ngram_losses - model_losses).mean() / math.log(2)),
              "groups": compare(model_losses, ngram_losses, groups(test_features)),
              "recurrent": data.model.recurrent}
    if data.model.recurrent:
        piece = split.ids[test[0] : test[0] + UNIT_CHARS]
        states, positions = hidden_states(data.model, piece)
        at = {k: v[test[0] + positions] for k, v in features.items()}
        untrained_states, _ = hidden_states(untrained_like(data), piece)
        result["units"] = correlations(states, at)
        result["untrained_units"] = correlations(untrained_states, at)
        result["saturation"] = saturation(states)
        result["untrained_saturation"] = saturation(untrained_states)
    result["_arrays"] = {"text": text, "test": test, "model": model_losses,
                         "ngram": ngram_losses}
    return result


PASSAGE = (2000, 900)  # (offset into the test split, characters) of the pictures' passage


def pictures(result: dict, folder: Path) -> list[Path]:
    arrays = result["_arrays"]
    test = arrays["test"]
    size = min(PASSAGE[1], len(test) - WARMUP)
    start = min(PASSAGE[0], len(test) - size)
    text = arrays["text"][test[start] : test[start] + size]
    gain = (arrays["ngram"] - arrays["model"])[start : start + size] / math.log(2)
    written = [folder / "vs_counting.png"]
    shaded_passage(text, gain, written[0], f"{Path(result['run']).name}: n-gram loss - model "
                   "loss per character", "RdBu", (-4.0, 4.0), "blue: the model wins, red: "
                   "counting wins, up to 4 bits")
    best = (result.get("units") or {}).get("line_position")
    if best is not None:
        data = load_run(Path(result["run"]))
        piece = data.split.ids[test[start] - WARMUP : test[start] + size]  # warm-up first
        states, _ = hidden_states(data.model, piece, chunks=1)
        values = states[f"layer {best['layer']} {best['kind']}"][:, best["unit"]]
        written.append(folder / "line_unit.png")
        shaded_passage(text, values, written[-1], f"unit {best['unit']} of layer "
                       f"{best['layer']} ({best['kind']}), r = {best['r']:.2f} with the "
                       "position in the line", "coolwarm",
                       (float(values.min()), float(values.max())),
                       "its value after reading each character: blue low, red high")
    return written


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders")
    parser.add_argument("--pictures", type=Path, help="write the first run's pictures here")
    args = parser.parse_args(argv)
    results, counted = [], {}
    try:
        for run in args.runs:
            data_path = OmegaConf.load(run / "config.yaml").data.path if (
                run / "config.yaml").is_file() else None
            if data_path not in counted and (run / "config.yaml").is_file():
                found, model = baseline(run_split(run))  # one n-gram per corpus
                counted[data_path] = (model, found)
            ngram_model, found = counted.get(data_path, (None, None))
            result = analyse(run, ngram_model, found["order"] if found else None)
            if found:
                result["ngram"] = {k: found[k] for k in ("order", "val_ppl", "test_ppl")}
            results.append(result)
            report(result)
            (run / "memory.json").write_text(json.dumps(
                {k: v for k, v in result.items() if k != "_arrays"}, indent=2) + "\n")
    except CharRNNError as err:
        parser.exit(2, f"error: {err}\n")
    if args.pictures:
        for path in pictures(results[0], args.pictures):
            print(f"wrote {path}")
    return results


def report(result: dict) -> None:
    print(f"\n{result['run']}: test ppl {result['model_test_ppl']:.4f}; Kneser-Ney order "
          f"{result['ngram_order']}: {result['ngram_test_ppl']:.4f}; the model's gain "
          f"{result['gain_bits']:+.4f} bits per character")
    # A share of the whole gain means little when the whole is near zero: then contributions
    # (bits per character of the split; the line-position rows add up to the whole) alone.
    shares = abs(result["gain_bits"]) >= 0.02
    print(f"  {'group':<26}{'chars':>8}{'share':>8}{'model':>8}{'n-gram':>8}{'gain':>8}"
          f"{'contrib':>9}{'of all' if shares else '':>8}")
    for g in result["groups"]:
        if g["chars"]:
            share = f"{g['share_of_gain']:>8.1%}" if shares else ""
            print(f"  {g['group']:<26}{g['chars']:>8,}{g['share']:>8.1%}{g['model_bits']:>8.3f}"
                  f"{g['ngram_bits']:>8.3f}{g['gain_bits']:>+8.3f}{g['contribution']:>+9.4f}"
                  f"{share}")
        else:
            print(f"  {g['group']:<26}{0:>8}  (none in this text)")
    if result.get("units"):
        print(f"  {'feature':<24}{'best unit':<18}{'r':>7}{'untrained r':>13}")
        for feature, best in result["units"].items():
            if best is None:
                print(f"  {feature:<24}(never in this text)")
                continue
            base = result["untrained_units"][feature]
            where = f"{best['kind']} {best['layer']}.{best['unit']}"
            print(f"  {feature:<24}{where:<18}{best['r']:>+7.3f}{base['r']:>+13.3f}")
        print(f"  saturated (|h| > {SATURATED}): {result['saturation']:.1%} of units per step "
              f"(untrained: {result['untrained_saturation']:.1%})")


if __name__ == "__main__":
    main()
