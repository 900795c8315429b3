"""The one place where `model.cell` picks an architecture, and the interface they share.

Every model maps characters (B, T) to next-character logits (B, T, V) and carries a state:

- `forward(x, state=None) -> (logits, state)`: training, evaluation and scoring;
- `embed(x)` and `forward_embedded(inputs, state=None)`: the same in two halves, so that
  diagnostics can differentiate with respect to the input representation;
- `stepper()`: a function (ids (B,), state) -> (logits (B, V), state) for generation;
- `recurrent`: whether the state summarises all the text read (an RNN's hidden state) or only
  a window of it (a Transformer's cache of keys and values).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from charrnn.errors import CharRNNError
from charrnn.models.rnn import RECURRENT_CELLS, CharRNN, State
from charrnn.models.transformer import CharTransformer, KVCache

CELLS = (*RECURRENT_CELLS, "transformer")
CharModel = CharRNN | CharTransformer

__all__ = ["CELLS", "CharModel", "CharRNN", "CharTransformer", "KVCache", "State",
           "build_model", "check_model_keys", "detach_state", "initial_state", "join_rows",
           "model_settings", "select_rows"]


def _architecture(cell: str) -> type[nn.Module]:
    if cell not in CELLS:
        raise CharRNNError(
            f"unknown model.cell {cell!r}: allowed values are {', '.join(CELLS)} "
            "(set model.cell on the command line or in conf/train/model/)."
        )
    return CharTransformer if cell == "transformer" else CharRNN


def model_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings (conf/train/model/ keys) the cell's architecture takes, its defaults filled in.

    Keys that belong to another architecture (model.num_heads for an RNN, model.kernel for a
    Transformer) are left out: one config serves every cell, as in a sweep over model.cell.
    """
    cell = settings.get("cell", "rnn")
    parameters = inspect.signature(_architecture(cell)).parameters
    chosen = {name: p.default for name, p in parameters.items()
              if name != "vocab_size" and p.default is not inspect.Parameter.empty}
    chosen.update({k: v for k, v in settings.items() if k in parameters})
    return chosen


def check_model_keys(settings: dict[str, Any]) -> None:
    """Raise a CharRNNError for a model.* key that no architecture takes (one added with
    `+model.<key>=...` would otherwise be ignored without a word)."""
    known = {"cell"} | {name for architecture in (CharRNN, CharTransformer)
                        for name in inspect.signature(architecture).parameters} - {"vocab_size"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise CharRNNError(
            f"model.{unknown[0]} is a setting of no model: the model.* keys are "
            f"{', '.join(sorted(known))}. Remove it from the command line or conf/train/model/ "
            "(docs/configuration.md)."
        )


def build_model(vocab_size: int, **settings: Any) -> CharModel:
    """The model that `model.*` describes, for a vocabulary of `vocab_size` characters."""
    architecture = _architecture(settings.get("cell", "rnn"))
    return architecture(vocab_size, **model_settings(settings))


def detach_state(state: Any) -> Any:
    """The state with every tensor in it detached (backpropagation stops here)."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, KVCache):
        return KVCache(state.position, detach_state(state.layers))
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    return state


def initial_state(model: CharModel, batch: int) -> State | None:
    """The state before any text for `batch` rows: zeros for a recurrent model (what its forward
    starts from without a state), None for a Transformer (an empty cache)."""
    if not model.recurrent:
        return None
    rnn, weight = model.rnn, model.head.weight
    h = torch.zeros(rnn.num_layers, batch, rnn.hidden_size, device=weight.device,
                    dtype=weight.dtype)
    return (h, torch.zeros_like(h)) if isinstance(rnn, nn.LSTM) else h


def select_rows(state: Any, index: torch.Tensor) -> Any:
    """The state of the batch rows `index` only (continuous batching: streams that leave)."""
    if isinstance(state, KVCache):  # keys and values (B, heads, n, d)
        return KVCache(state.position, tuple((k[index], v[index]) for k, v in state.layers))
    if isinstance(state, (tuple, list)):
        return type(state)(select_rows(s, index) for s in state)
    return state[:, index]  # (num_layers, B, H)


def join_rows(states: list[Any]) -> Any:
    """Recurrent states side by side along the batch (streams that join); a Transformer's
    caches join only at the same position, so its streams are not joined."""
    if isinstance(states[0], (tuple, list)):
        return type(states[0])(join_rows(list(parts)) for parts in zip(*states))
    return torch.cat(states, dim=1)
