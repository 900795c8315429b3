"""Where a model's perplexity on a split comes from: speakers' names against everything else.

    python -m charrnn.speakers <run> [<run> ...] [--split test]

Every speech of a play starts with a line holding its speaker's name ("PETRUCHIO:"). The split
is scored as one stream (as `generate.py mode=score` scores it), and each character's loss goes
into one of three groups: the name lines of speakers whom the training split names too, the name
lines of speakers it never names, and all other characters. A model that can copy a name it has
read a few lines before gains on the second group.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch
from omegaconf import OmegaConf

from charrnn.checkpoints import resolve_checkpoint
from charrnn.data import split_sizes, split_text, tinyshakespeare_path
from charrnn.sampling import character_losses, load_model
from charrnn.vocab import read_text

# A speaker's line: a name (letters, spaces, apostrophes, hyphens) and a colon, alone on its
# line, after an empty line or at the start of the text.
SPEAKER = re.compile(r"(?:^|(?<=\n\n))([A-Za-z][A-Za-z' -]*):(?=\n)")
GROUPS = ("seen speakers' names", "unseen speakers' names", "everything else")


def speakers(text: str) -> set[str]:
    return {m[1] for m in SPEAKER.finditer(text)}


def character_groups(text: str, known: set[str]) -> torch.Tensor:
    """For each character of `text`, its group: 0 (a name line of a known speaker, colon
    included), 1 (of a speaker not in `known`) or 2 (anything else)."""
    groups = torch.full((len(text),), 2, dtype=torch.long)
    for m in SPEAKER.finditer(text):
        groups[m.start() : m.end() + 1] = 0 if m[1] in known else 1
    return groups


def _run_corpus(run: Path) -> str:
    data = OmegaConf.load(run / "config.yaml").data
    return read_text(Path(data.path).expanduser() if data.path
                     else tinyshakespeare_path(data.cache_dir))


def analyse(run: Path, split: str = "test") -> dict[str, dict[str, float]]:
    """Perplexity and characters of each group of the run's split, one stream, static."""
    corpus = _run_corpus(run)
    cfg = OmegaConf.load(run / "config.yaml").data
    n_train, _, _ = split_sizes(len(corpus), cfg.val_fraction, cfg.test_fraction)
    known = speakers(corpus[:n_train])
    text = split_text(run, split)  # the character before the split first: it is not scored
    model, vocab = load_model(resolve_checkpoint(run, "best"))
    losses = character_losses(model, vocab.encode(text).long())  # losses[j]: text[j + 1]
    groups = character_groups(text, known)[1:]
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
    args = parser.parse_args(argv)
    header = ["run", *GROUPS, "all"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for run in args.runs:
        result = analyse(run, args.split)
        cells = [f"{result[g]['ppl']:.3f} ({result[g]['characters']:,} chars)" if g in result
                 else "" for g in header[1:]]
        label = OmegaConf.load(run / "config.yaml").model.cell
        print(f"| {label} ({run.name}) | " + " | ".join(cells) + " |")
    seen, unseen = result["speeches"]["seen"], result["speeches"]["unseen"]
    print(f"\n{args.split} split: {seen + unseen} speeches, {unseen} by speakers the training "
          "split never names")


if __name__ == "__main__":
    main()
