"""A run as an ONNX model for any runtime: the recurrent step over a batch of character
sequences, its state in and out, the vocabulary and the run's card in the model's metadata."""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

import torch
from torch import nn

from charrnn.data.vocab import CharVocab
from charrnn.errors import CharRNNError
from charrnn.export.weights import cell_of
from charrnn.models.registry import CharModel

OPSET = 17  # onnxruntime 1.14 and later run it


class OneStep(nn.Module):
    """chars (B, T) int64 and the state -> logits (B, T, V) and the state after them.

    nn.RNN / GRU / LSTM's own forward (not the fused CPU kernel, which ONNX has no op for),
    the input one-hot (a row of an identity matrix) or embedded, the model's head."""

    def __init__(self, model: CharModel) -> None:
        super().__init__()
        self.lstm = cell_of(model) == "lstm"
        self.rnn, self.head, self.embedding = model.rnn, model.head, model.embedding
        self.register_buffer("eye", torch.eye(model.vocab_size))

    def forward(self, chars: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None = None):
        x = self.eye[chars] if self.embedding is None else self.embedding(chars)
        if self.lstm:
            out, (h, c) = self.rnn(x, (h, c))
            return self.head(out), h, c
        out, h = self.rnn(x, h)
        return self.head(out), h


def check_onnx() -> None:
    """The onnx package writes the metadata: a CharRNNError before anything runs without it."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CharRNNError(
            "format=onnx needs the onnx package, which is not installed: "
            "pip install -e '.[export]' (format=html needs nothing more)."
        ) from None


def onnx_model(model: CharModel, vocab: CharVocab, card: dict[str, Any]) -> bytes:
    """The ONNX file's bytes: inputs chars, h (and c), outputs logits, h_out (and c_out); batch
    and time free; metadata `vocab` (a JSON string) and `charrnn` (the run's card, JSON)."""
    import onnx

    step = OneStep(model).eval()
    states = ["h", "c"] if step.lstm else ["h"]
    rnn = model.rnn
    zeros = torch.zeros(rnn.num_layers, 1, rnn.hidden_size)
    args = (torch.zeros(1, 2, dtype=torch.long), *([zeros] * len(states)))
    axes = {"chars": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"},
            **{name: {1: "batch"} for name in (*states, *(f"{s}_out" for s in states))}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on RNNs and batch
        # dynamo=False: the TorchScript exporter, which maps nn.RNN/GRU/LSTM to ONNX's own
        # recurrent ops and needs no onnxscript (torch 2.6 to 2.13 have it)
        torch.onnx.export(step, args, buffer, input_names=["chars", *states],
                          output_names=["logits", *(f"{s}_out" for s in states)],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    proto = onnx.load_model_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {
        "vocab": json.dumps(vocab.chars, ensure_ascii=False),
        "charrnn": json.dumps(card, ensure_ascii=False)})
    proto.producer_name = "charrnn"
    return proto.SerializeToString()
