"""Temperature sampling and scoring with a trained CharRNN (plain torch: no Lightning import)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from charrnn.checkpoints import load_checkpoint
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN
from charrnn.vocab import CharVocab


def load_model(path: str | Path, device: str = "cpu") -> tuple[CharRNN, CharVocab]:
    """Model and vocabulary from a checkpoint alone (loaded with `weights_only=True`)."""
    ckpt = load_checkpoint(path)
    hparams = ckpt["hyper_parameters"]
    vocab = CharVocab(hparams["vocab"])
    model = CharRNN(len(vocab), **hparams["model"])
    # The LightningModule keeps the CharRNN under `model.`; its metrics hold no weights.
    state = {
        k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
    }
    model.load_state_dict(state)
    return model.to(device).eval(), vocab


def check_sampling_args(vocab: CharVocab, prompt: str, length: int, temperature: float,
                        top_k: int | None, num_samples: int = 1) -> None:
    """Raise a CharRNNError naming the option and its allowed values for any bad argument."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        temperature >= 0 and math.isfinite(temperature)
    ):
        raise CharRNNError(
            f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}. "
            "E.g. `temperature=0.8`."
        )
    for name, value in (("length", length), ("num_samples", num_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CharRNNError(f"{name} must be a positive integer, got {value!r}.")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(vocab)
    ):
        raise CharRNNError(
            f"top_k must be an integer from 1 to the vocabulary size {len(vocab)} (or null for "
            f"no limit), got {top_k!r}."
        )
    unknown = vocab.unknown(prompt)
    if unknown:
        raise CharRNNError(
            f"the prompt has characters that are not in the checkpoint's vocabulary: "
            f"{''.join(unknown)!r}. Remove them from `prompt`; the vocabulary is "
            f"{vocab.chars!r}."
        )


def next_char_distribution(logits: torch.Tensor, temperature: float,
                           top_k: int | None = None) -> torch.Tensor:
    """Probabilities softmax(logits / T) over the last dimension, limited to the top k."""
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return F.softmax(logits / temperature, dim=-1)


@torch.inference_mode()
def sample_text(
    model: CharRNN,
    vocab: CharVocab,
    prompt: str = "",
    length: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    on_step: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """Generate `num_samples` continuations of `prompt` together, one character at a time.

    The hidden state is carried from step to step. T = 0 is greedy (argmax) decoding. An empty
    prompt starts from a newline (or the first character of the vocabulary). `on_step` gets the
    new characters of every sample as they are drawn (for streaming).
    """
    check_sampling_args(vocab, prompt, length, temperature, top_k, num_samples)
    device = model.head.weight.device
    start = prompt or ("\n" if "\n" in vocab.chars else vocab.chars[0])
    x = vocab.encode(start).long().to(device).expand(num_samples, -1)  # (B, P)
    logits, state = model(x)
    logits = logits[:, -1]  # (B, V)
    out = torch.empty(num_samples, length, dtype=torch.long, device=device)
    for t in range(length):
        if temperature == 0:
            ids = logits.argmax(dim=-1)
        else:
            probs = next_char_distribution(logits, temperature, top_k)
            ids = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        out[:, t] = ids
        if on_step is not None:
            on_step([vocab.chars[i] for i in ids.tolist()])
        if t + 1 < length:
            logits, state = model(ids.unsqueeze(1), state)
            logits = logits[:, -1]
    return [vocab.decode(row) for row in out.cpu()]


@torch.inference_mode()
def score_text(model: CharRNN, vocab: CharVocab, text: str,
               chunk: int = 1000) -> dict[str, float | int | str]:
    """Perplexity of `text` under the model, the state carried across the whole text.

    Characters outside the vocabulary are removed before scoring, and reported.
    """
    unknown = vocab.unknown(text)
    kept = text.translate({ord(c): None for c in unknown})
    if len(kept) < 2:
        raise CharRNNError("the text needs at least 2 characters in the vocabulary to be scored.")
    ids = vocab.encode(kept).long().to(model.head.weight.device).unsqueeze(0)  # (1, N)
    total, state = 0.0, None
    for i in range(0, ids.shape[1] - 1, chunk):
        x, y = ids[:, i : i + chunk], ids[:, i + 1 : i + 1 + chunk]
        logits, state = model(x[:, : y.shape[1]], state)
        total += F.cross_entropy(logits[0].float(), y[0], reduction="sum").item()
    n = ids.shape[1] - 1
    return {
        "characters_scored": n,
        "loss": total / n,
        "ppl": math.exp(total / n),
        "unknown_removed": len(text) - len(kept),
        "unknown_chars": "".join(unknown),
    }
