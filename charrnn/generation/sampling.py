"""Temperature sampling and scoring with a trained model (plain torch: no Lightning import)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

from charrnn.data.vocab import CharVocab
from charrnn.errors import CharRNNError, check_int
from charrnn.generation.dynamic import dynamic_loss_sum
from charrnn.models.registry import CharModel


def check_sampling_args(vocab: CharVocab, prompt: str, length: int, temperature: float,
                        top_k: int | None, num_samples: int = 1, prefix: str = "") -> None:
    """Raise a CharRNNError naming the option (`prefix` + name) and its allowed values."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        temperature >= 0 and math.isfinite(temperature)
    ):
        raise CharRNNError(
            f"{prefix}temperature must be a number >= 0 (0 means greedy), got {temperature!r}. "
            f"E.g. `{prefix}temperature=0.8`."
        )
    check_int(f"{prefix}length", length)
    check_int(f"{prefix}num_samples", num_samples)
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(vocab)
    ):
        raise CharRNNError(
            f"{prefix}top_k must be an integer from 1 to the vocabulary size {len(vocab)} (or "
            f"null for no limit), got {top_k!r}."
        )
    unknown = vocab.unknown(prompt)
    if unknown:
        raise CharRNNError(
            f"{prefix}prompt has characters that are not in the vocabulary: "
            f"{''.join(unknown)!r}. Remove them from `{prefix}prompt`; the vocabulary is "
            f"{vocab.chars!r}."
        )


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` (B, V), drawn with those probabilities.

    argmax(p_i / E_i) with E_i ~ Exp(1) picks i with probability p_i (an exponential race):
    exact like torch.multinomial, and cheaper per step.
    """
    race = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / race).argmax(dim=-1)


def next_char_distribution(logits: torch.Tensor, temperature: float,
                           top_k: int | None = None) -> torch.Tensor:
    """Probabilities softmax(logits / T) over the last dimension, limited to the top k."""
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return F.softmax(logits / temperature, dim=-1)


@torch.inference_mode()
def sample_text(
    model: CharModel,
    vocab: CharVocab,
    prompt: str = "",
    length: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    on_step: Callable[[list[str]], None] | None = None,
    mix: Callable[[torch.Tensor, list[list[int]]], torch.Tensor] | None = None,
) -> list[str]:
    """Generate `num_samples` continuations of `prompt` together, one character at a time.

    The hidden state is carried from step to step. T = 0 is greedy (argmax) decoding. An empty
    prompt starts from a newline (or the first character of the vocabulary). `on_step` gets the
    new characters of every sample as they are drawn (for streaming). `mix` (the model's
    logits (B, V), each row's characters so far) -> the log-probabilities to draw from instead
    (a mixture with counting: charrnn.studies.mixture), temperature and top-k applied to them.
    """
    check_sampling_args(vocab, prompt, length, temperature, top_k, num_samples)
    device = model.head.weight.device
    start = prompt or ("\n" if "\n" in vocab.chars else vocab.chars[0])
    x = vocab.encode(start).long().to(device).expand(num_samples, -1)  # (B, P)
    logits, state = model(x)
    logits = logits[:, -1]  # (B, V)
    step = model.stepper()
    out = torch.empty(num_samples, length, dtype=torch.long, device=device)
    history = [vocab.encode(start).tolist() for _ in range(num_samples)] if mix else []
    for t in range(length):
        if mix is not None:
            logits = mix(logits, history)
        if temperature == 0:
            ids = logits.argmax(dim=-1)
        else:
            ids = draw(next_char_distribution(logits, temperature, top_k), generator)
        out[:, t] = ids
        for row, i in zip(history, ids.tolist()):
            row.append(i)
        if on_step is not None:
            on_step([vocab.chars[i] for i in ids.tolist()])
        if t + 1 < length:
            logits, state = step(ids, state)
    return [vocab.decode(row) for row in out.cpu()]


def sample_metrics(model: CharModel, vocab: CharVocab, samples: list[str]) -> dict[str, float]:
    """How a temperature changes text: the model's own perplexity of its samples (at T = 1) and
    the share of distinct words among all words."""
    losses = [score_text(model, vocab, s)["loss"] for s in samples if len(s) >= 2]
    words = [w for s in samples for w in re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", s.lower())]
    return {
        "sample_ppl": math.exp(sum(losses) / len(losses)) if losses else math.nan,
        "distinct_words": len(set(words)) / len(words) if words else 0.0,
        "words": len(words),
    }


def score_text(
    model: CharModel,
    vocab: CharVocab,
    text: str,
    chunk: int = 1000,
    dynamic_lr: float = 0.0,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, float | int | str]:
    """Perplexity of `text` under the model, the state carried across the whole text.

    Characters outside the vocabulary are removed before scoring, and reported. With
    `dynamic_lr` > 0 the score is a dynamic evaluation (charrnn.generation.dynamic): the weights
    of a copy of the model adapt after every `chunk` characters; 0 keeps them fixed (static
    evaluation).
    """
    unknown = vocab.unknown(text)
    kept = text.translate({ord(c): None for c in unknown})
    if len(kept) < 2:
        raise CharRNNError("the text needs at least 2 characters in the vocabulary to be scored.")
    ids = vocab.encode(kept).long().to(model.head.weight.device)  # (N,)
    if dynamic_lr:
        total = dynamic_loss_sum(model, ids, dynamic_lr, chunk, on_progress)
    else:
        total = _static_loss_sum(model, ids, chunk)
    n = ids.shape[0] - 1
    return {
        "characters_scored": n,
        "loss": total / n,
        "ppl": math.exp(total / n),
        "unknown_removed": len(text) - len(kept),
        "unknown_chars": "".join(unknown),
    }


def _static_loss_sum(model: CharModel, ids: torch.Tensor, chunk: int) -> float:
    return float(character_losses(model, ids, chunk).double().sum())


def _read(model: CharModel, ids: torch.Tensor, chunk: int):
    """(logits (n, V), targets (n,)) of each chunk of ids[1:] given the characters before it,
    fixed weights, the state carried across the whole text; chunks only bound the memory."""
    ids = ids.unsqueeze(0)  # (1, N)
    state = None
    for i in range(0, ids.shape[1] - 1, chunk):
        x, y = ids[:, i : i + chunk], ids[:, i + 1 : i + 1 + chunk]
        logits, state = model(x[:, : y.shape[1]], state)
        yield logits[0], y[0]


@torch.inference_mode()
def character_losses(model: CharModel, ids: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """The cross-entropy (nats) of each of ids[1:] (N - 1,) given the characters before it,
    fixed weights, the state carried across the whole text."""
    return torch.cat([F.cross_entropy(logits.float(), y, reduction="none")
                      for logits, y in _read(model, ids, chunk)]).cpu()


@torch.inference_mode()
def character_log_probs(model: CharModel, ids: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """ln p(. | the characters before) over the vocabulary for each of ids[1:] (N - 1, V), in
    float64, read as character_losses reads the text."""
    return torch.cat([torch.log_softmax(logits.double(), dim=-1)
                      for logits, _ in _read(model, ids, chunk)]).cpu()
