"""Dropout variants for language models on small corpora (Merity et al. 2018, AWD-LSTM).

Each acts in training only and returns its input unchanged in eval mode (or when its rate is
0), so evaluation, scoring and generation never see a mask:

- locked (variational) dropout: one mask per sequence, shared by every time step;
- character dropout: whole characters dropped from the input for the whole batch (a row of
  the embedding, or a column of W_ih for one-hot input);
- weight drop (DropConnect): entries of the hidden-to-hidden weights dropped for the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from charrnn.errors import check_number


def check_rate(key: str, rate: float) -> None:
    check_number(key, rate, "conf/train/model/", at_least=0, below=1, note=" (0 = off)")


def locked_dropout(x: torch.Tensor, rate: float, training: bool, time_dim: int) -> torch.Tensor:
    """Dropout with one mask per sequence: the same units are dropped at every time step."""
    if not training or rate == 0:
        return x
    shape = list(x.shape)
    shape[time_dim] = 1
    mask = x.new_empty(shape).bernoulli_(1 - rate).div_(1 - rate)
    return x * mask


def character_scale(vocab_size: int, rate: float, training: bool,
                    like: torch.Tensor) -> torch.Tensor | None:
    """(V,) factors, 0 for dropped characters and 1 / (1 - rate) for kept ones; None if off."""
    if not training or rate == 0:
        return None
    return like.new_empty(vocab_size).bernoulli_(1 - rate).div_(1 - rate)


def drop_embedding(weight: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """An embedding table (V, E) with whole rows (characters) dropped for this batch."""
    scale = character_scale(weight.shape[0], rate, training, weight)
    return weight if scale is None else weight * scale[:, None]


def drop_weights(named: dict[str, torch.Tensor], rate: float,
                 training: bool) -> dict[str, torch.Tensor]:
    """DropConnect: the given weights with entries dropped (and rescaled); {} when off."""
    if not training or rate == 0:
        return {}
    return {name: F.dropout(w, rate, training=True) for name, w in named.items()}
