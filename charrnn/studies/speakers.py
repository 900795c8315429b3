"""Where a model's perplexity on a split comes from: speakers' names against everything else.

    python -m charrnn.studies.speakers <run> [<run> ...] [--split test]

Every speech of a play starts with a line holding its speaker's name ("PETRUCHIO:"). The split
is scored as one stream (as `generate.py mode=score` scores it), and each character's loss goes
into a group: the name lines of speakers whom the training split names too; the name lines of
speakers it never names, apart by whether that name line already appears in the `--window`
characters before it (a name a model could copy from what it has just read) or not; and all
other characters.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch
from omegaconf import OmegaConf

from charrnn.data.corpus import split_sizes, split_text, tinyshakespeare_path
from charrnn.data.vocab import read_text
from charrnn.generation.loading import load_model
from charrnn.generation.sampling import character_losses
from charrnn.training.run_folder import resolve_checkpoint

# A speaker's line: a name (letters, spaces, apostrophes, hyphens) and a colon, alone on its
# line, after an empty line or at the start of the text.
SPEAKER = re.compile(r"(?:^|(?<=\n\n))([A-Za-z][A-Za-z' -]*):(?=\n)")
GROUPS = ("seen speakers' names", "unseen names, in the window before",
          "unseen names, not in the window", "everything else")


def speakers(text: str) -> set[str]:
    return {m[1] for m in SPEAKER.finditer(text)}


def character_groups(text: str, known: set[str], window: int) -> torch.Tensor:
    """For each character of `text`, its index in GROUPS: a name line (colon included) of a
    known speaker (0); of an unknown one whose name line also appears in the `window`
    characters before it (1) or does not (2); anything else (3)."""
    groups = torch.full((len(text),), 3, dtype=torch.long)
    for m in SPEAKER.finditer(text):
        if m[1] in known:
            group = 0
        else:
            group = 1 if f"\n{m[1]}:\n" in text[max(0, m.start() - window - 1) : m.start()] else 2
        groups[m.start() : m.end() + 1] = group
    return groups


def _run_corpus(run: Path) -> str:
    data = OmegaConf.load(run / "config.yaml").data
    return read_text(Path(data.path).expanduser() if data.path
                     else tinyshakespeare_path(data.cache_dir))


def analyse(run: Path, split: str = "test", window: int = 256) -> dict[str, dict[str, float]]:
    """Perplexity and characters of each group of the run's split, one stream, static."""
    corpus = _run_corpus(run)
    cfg = OmegaConf.load(run / "config.yaml").data
    n_train, _, _ = split_sizes(len(corpus), cfg.val_fraction, cfg.test_fraction)
    known = speakers(corpus[:n_train])
    text = split_text(run, split)  # the character before the split first: it is not scored
    model, vocab = load_model(resolve_checkpoint(run, "best"))
    losses = character_losses(model, vocab.encode(text).long())  # losses[j]: text[j + 1]
    groups = character_groups(text, known, window)[1:]
    result = {}
    for index, name in enumerate(GROUPS + ("all",)):
        chosen = losses if name == "all" else losses[groups == index]
        if chosen.numel():
            result[name] = {"characters": chosen.numel(),
                            "ppl": math.exp(float(chosen.double().mean())),
                            "share_of_loss": float(chosen.double().sum() / losses.double().sum())}
    result["speeches"] = {"seen": sum(m[1] in known for m in SPEAKER.finditer(text)),
                          "unseen": sum(m[1] not in known for m in SPEAKER.finditer(text))}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Perplexity of a split's speaker-name lines (speakers the training split "
        "names, and those it does not) against the rest of the text, for trained runs.")
    parser.add_argument("runs", type=Path, nargs="+", help="run folders")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--window", type=int, default=256,
                        help="characters before a name line searched for the same name line")
    args = parser.parse_args(argv)
    header = ["run", *GROUPS, "all"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for run in args.runs:
        result = analyse(run, args.split, args.window)
        cells = [f"{result[g]['ppl']:.3f} ({result[g]['characters']:,} chars)" if g in result
                 else "" for g in header[1:]]
        label = OmegaConf.load(run / "config.yaml").model.cell
        print(f"| {label} ({run.name}) | " + " | ".join(cells) + " |")
    seen, unseen = result["speeches"]["seen"], result["speeches"]["unseen"]
    print(f"\n{args.split} split: {seen + unseen} speeches, {unseen} by speakers the training "
          "split never names")


if __name__ == "__main__":
    main()
