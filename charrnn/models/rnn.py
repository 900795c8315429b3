"""The recurrent models: one-hot (or embedded) characters -> RNN, LSTM or GRU -> linear head."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from charrnn import host
from charrnn.errors import CharRNNError, check_int
from charrnn.models.recurrence import layer_parameters, rnn_tanh
from charrnn.models.regularization import (
    character_scale,
    check_rate,
    drop_embedding,
    drop_weights,
    locked_dropout,
)

RECURRENT_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
INPUTS = ("onehot", "embedding")
# Which code computes a vanilla RNN: torch = nn.RNN's own forward; fused = charrnn.models.recurrence
# (same parameters and function, faster on a CPU); auto = fused on a CPU, torch (cuDNN) on a GPU.
KERNELS = ("auto", "torch", "fused")

# The recurrent state: a tensor (num_layers, B, H), or (h, c) for an LSTM.
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def check_input(input: str, embedding_dim: int | None) -> None:
    if input not in INPUTS:
        raise CharRNNError(
            f"unknown model.input {input!r}: allowed values are {', '.join(INPUTS)} "
            "(set model.input on the command line or in conf/train/model/)."
        )
    if input == "embedding" and embedding_dim is not None:
        check_int("model.embedding_dim", embedding_dim, "conf/train/model/")


class CharRNN(nn.Module):
    """Predicts the next character at every step; `forward` also returns the final state."""

    recurrent = True  # a state that summarises all the text read (carry_state, diagnostics)

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 512,
        num_layers: int = 1,
        cell: str = "rnn",
        input: str = "onehot",
        embedding_dim: int | None = None,
        dropout: float = 0.0,
        kernel: str = "auto",
        weight_drop: float = 0.0,
        locked_dropout: float = 0.0,
        embedding_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_int("model.hidden_size", hidden_size, "conf/train/model/")
        check_int("model.num_layers", num_layers, "conf/train/model/")
        if cell not in RECURRENT_CELLS:
            raise CharRNNError(
                f"CharRNN builds the recurrent cells {', '.join(RECURRENT_CELLS)}, not {cell!r} "
                "(charrnn.models.registry.build_model picks the class for any model.cell)."
            )
        check_input(input, embedding_dim)
        if input == "embedding" and embedding_dim is None:
            raise CharRNNError(
                "model.input=embedding needs a positive model.embedding_dim, got None "
                "(e.g. `model.embedding_dim=64`)."
            )
        if kernel not in KERNELS or (kernel == "fused" and cell != "rnn"):
            raise CharRNNError(
                f"model.kernel={kernel!r} with model.cell={cell!r}: allowed values are "
                f"{', '.join(KERNELS)}, and fused only with model.cell=rnn "
                "(set model.kernel on the command line or in conf/train/model/)."
            )
        for key, rate in (("model.dropout", dropout), ("model.weight_drop", weight_drop),
                          ("model.locked_dropout", locked_dropout),
                          ("model.embedding_dropout", embedding_dropout)):
            check_rate(key, rate)
        self.vocab_size = vocab_size
        self.input = input
        self.kernel = kernel
        self.weight_drop = weight_drop
        self.locked_dropout = locked_dropout
        self.embedding_dropout = embedding_dropout
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if input == "embedding" else None
        input_size = embedding_dim if input == "embedding" else vocab_size
        # nn.RNN's own dropout acts only between stacked layers; a second Dropout sits before the
        # head so that dropout also means something for a single layer.
        self.rnn = RECURRENT_CELLS[cell](
            input_size, hidden_size, num_layers=num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def uses_fused_kernel(self) -> bool:
        if self.kernel == "auto":
            return isinstance(self.rnn, nn.RNN) and self.head.weight.device.type == "cpu"
        return self.kernel == "fused"

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x: (B, T) character indices -> logits (B, T, V) and the final recurrent state.

        Under bf16 autocast the head runs in bf16 too (the loss is taken in fp32): keeping it in
        fp32 cost a fifth of the fast path's step time and did not help the final test
        perplexity (docs/performance.md).
        """
        locked_input = self.training and self.locked_dropout > 0
        if self.embedding is None and self.uses_fused_kernel() and not locked_input:
            # One-hot input is a row lookup in W_ih^T: no one-hot tensor is built.
            scale = character_scale(self.vocab_size, self.embedding_dropout, self.training,
                                    self.head.weight)
            precision, x, state = _recurrence_precision(x, state, fused=True)
            with precision:
                out, state = rnn_tanh(self.rnn, x.t(), state, onehot=True,
                                      weights=self._dropped_weights(), char_scale=scale)
            return self._output(out, time_dim=0).transpose(0, 1), state
        return self.forward_embedded(self._input(x), state)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The input representation (B, T, D) of characters x (B, T): one-hot or embedded."""
        if self.embedding is None:
            return F.one_hot(x, self.vocab_size).to(self.head.weight.dtype)
        return self.embedding(x)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """embed(x) with the training-time character and locked dropout."""
        if self.embedding is not None:
            weight = drop_embedding(self.embedding.weight, self.embedding_dropout, self.training)
            inputs = F.embedding(x, weight)
        else:
            inputs = self.embed(x)
            scale = character_scale(self.vocab_size, self.embedding_dropout, self.training,
                                    inputs)
            if scale is not None:
                inputs = inputs * scale
        return locked_dropout(inputs, self.locked_dropout, self.training, time_dim=1)

    def forward_embedded(self, inputs: torch.Tensor,
                         state: State | None = None) -> tuple[torch.Tensor, State]:
        """inputs (B, T, D), as `embed` makes them -> logits (B, T, V) and the final state."""
        weights = self._dropped_weights()
        fused = self.uses_fused_kernel()
        precision, inputs, state = _recurrence_precision(inputs, state, fused)
        if fused:
            with precision:
                out, state = rnn_tanh(self.rnn, inputs.transpose(0, 1), state, onehot=False,
                                      weights=weights)
            return self._output(out, time_dim=0).transpose(0, 1), state
        with precision:
            if weights:  # DropConnect: this call runs with the dropped hidden-to-hidden weights
                out, state = functional_call(self.rnn, weights, (inputs, state))
            else:
                out, state = self.rnn(inputs, state)  # (B, T, H)
        return self._output(out, time_dim=1), state

    def _dropped_weights(self) -> dict[str, torch.Tensor]:
        names = (f"weight_hh_l{i}" for i in range(self.rnn.num_layers))
        return drop_weights({n: getattr(self.rnn, n) for n in names}, self.weight_drop,
                            self.training)

    def _output(self, out: torch.Tensor, time_dim: int) -> torch.Tensor:
        out = locked_dropout(out, self.locked_dropout, self.training, time_dim)
        return self.head(self.dropout(out))

    def stepper(self):
        """A function (ids (B,), state) -> (logits (B, V), state): one character for a batch."""
        if isinstance(self.rnn, nn.RNN) and self.rnn.nonlinearity == "tanh" and (
            self.embedding is None and not self.training
        ):
            return _TanhStepper(self)
        return lambda ids, state: _last(self(ids.unsqueeze(1), state))


def recurrence_leaves_bf16_autocast(inputs: torch.Tensor, fused: bool = False) -> bool:
    """Whether the recurrence runs in fp32 outside bf16 autocast (the head stays in it).

    On a GPU, for nn.RNN, LSTM and GRU: PyTorch's autocast gives cuDNN's RNNs fp16, whatever
    autocast's dtype (`_cudnn_rnn_cast_reflatten`), and no loss scaler guards fp16 under
    bf16-mixed (on the H200 cuDNN's fp16 RNN was slower than fp32 with one-hot input anyway,
    docs/performance.md). On a CPU whose oneDNN has no bf16 kernels (AVX2 and older x86,
    `charrnn.host.onednn_has_bf16`), for every kernel, the fused one too: there is no bf16 LSTM
    at all ("could not create a primitive descriptor"), and bf16 is emulated, so slowly that
    the default model trained 25 times slower than in fp32 (docs/performance.md, bf16).
    """
    if inputs.is_cuda:
        return (not fused and torch.is_autocast_enabled("cuda")
                and torch.get_autocast_dtype("cuda") == torch.bfloat16)
    return (inputs.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and not host.onednn_has_bf16())


def _recurrence_precision(inputs: torch.Tensor, state: State | None, fused: bool = False
                          ) -> tuple[contextlib.AbstractContextManager, torch.Tensor,
                                     State | None]:
    """Where the recurrence leaves bf16 autocast: autocast off, and the inputs (unless they
    are character indices) and the state in fp32. Elsewhere all three unchanged."""
    if not recurrence_leaves_bf16_autocast(inputs, fused):
        return contextlib.nullcontext(), inputs, state
    if inputs.is_floating_point():
        inputs = inputs.float()
    if state is not None:
        state = tuple(s.float() for s in state) if isinstance(state, tuple) else state.float()
    return torch.autocast(inputs.device.type, enabled=False), inputs, state


def _last(result: tuple[torch.Tensor, State]) -> tuple[torch.Tensor, State]:
    logits, state = result
    return logits[:, -1], state


class _TanhStepper:
    """One step of a vanilla tanh RNN with one-hot input, written out.

    Multiplying a one-hot vector by W_ih selects a column of it, so a precomputed table (V, H)
    of W_ih columns plus both biases replaces the one-hot matmul and nn.RNN's per-call overhead
    (tests check it against CharRNN.forward).
    """

    def __init__(self, model: CharRNN) -> None:
        self.model = model
        params = [layer_parameters(model.rnn, i) for i in range(model.rnn.num_layers)]
        w_ih, _, bias = params[0]
        self.table = (w_ih.T + bias).contiguous()  # (V, H): one row per character
        self.w_ih_t = [w.T.contiguous() for w, _, _ in params]  # layers above the first
        self.bias = [b for _, _, b in params]
        self.w_hh_t = [w.T.contiguous() for _, w, _ in params]
        self.w_head_t = model.head.weight.T.contiguous()

    def __call__(self, ids: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, State]:
        layers = []
        x = None
        for i, h in enumerate(state):  # state: (num_layers, B, H)
            pre = self.table[ids] if i == 0 else torch.addmm(self.bias[i], x, self.w_ih_t[i])
            x = torch.tanh(torch.addmm(pre, h, self.w_hh_t[i]))  # (B, H)
            layers.append(x)
        return torch.addmm(self.model.head.bias, x, self.w_head_t), torch.stack(layers)
