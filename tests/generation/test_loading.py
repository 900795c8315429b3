"""Checkpoints load safely and on their own, whichever layout of the package wrote them."""

import json
from pathlib import Path

import torch

from charrnn.generation.loading import load_model
from charrnn.generation.sampling import sample_text, score_text

FLAT_LAYOUT_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "flat_layout_run"


def test_a_checkpoint_of_the_flat_package_samples_and_scores_as_it_did():
    """tests/fixtures/flat_layout_run: written by charrnn before its modules moved into
    layers; today's code makes the same text and the same perplexity of it."""
    expected = json.loads((FLAT_LAYOUT_RUN / "expected.json").read_text(encoding="utf-8"))
    model, vocab = load_model(FLAT_LAYOUT_RUN / "last.ckpt")
    sampled = expected["sampled"]
    generator = torch.Generator().manual_seed(sampled["seed"])
    assert sample_text(model, vocab, expected["prompt"], expected["length"],
                       sampled["temperature"], generator=generator) == [sampled["text"]]
    assert sample_text(model, vocab, expected["prompt"], expected["length"], 0) == [
        expected["greedy"]]
    score = score_text(model, vocab, (FLAT_LAYOUT_RUN / "corpus.txt").read_text(encoding="utf-8"))
    assert score["characters_scored"] == expected["characters_scored"]
    assert abs(score["ppl"] - expected["corpus_ppl"]) < 1e-9 * expected["corpus_ppl"]
