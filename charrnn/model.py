"""The pure-torch recurrent model: one-hot (or embedded) characters -> RNN -> linear head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charrnn.errors import CharRNNError, check_positive_int
from charrnn.recurrence import rnn_tanh

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
INPUTS = ("onehot", "embedding")
# Which code computes a vanilla RNN: torch = nn.RNN's own forward; fused = charrnn.recurrence
# (same parameters and function, faster on a CPU); auto = fused on a CPU, torch (cuDNN) on a GPU.
KERNELS = ("auto", "torch", "fused")

# The recurrent state: a tensor (num_layers, B, H), or (h, c) for an LSTM.
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class CharRNN(nn.Module):
    """Predicts the next character at every step; `forward` also returns the final state."""

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
    ) -> None:
        super().__init__()
        check_positive_int("model.hidden_size", hidden_size, "conf/model/")
        check_positive_int("model.num_layers", num_layers, "conf/model/")
        if cell not in CELLS:
            raise CharRNNError(
                f"unknown model.cell {cell!r}: allowed values are {', '.join(CELLS)} "
                "(set model.cell on the command line or in conf/model/)."
            )
        if input not in INPUTS:
            raise CharRNNError(
                f"unknown model.input {input!r}: allowed values are {', '.join(INPUTS)} "
                "(set model.input on the command line or in conf/model/)."
            )
        if input == "embedding" and (not isinstance(embedding_dim, int) or embedding_dim <= 0):
            raise CharRNNError(
                "model.input=embedding needs a positive model.embedding_dim, got "
                f"{embedding_dim!r} (e.g. `model.embedding_dim=64`)."
            )
        if kernel not in KERNELS or (kernel == "fused" and cell != "rnn"):
            raise CharRNNError(
                f"model.kernel={kernel!r} with model.cell={cell!r}: allowed values are "
                f"{', '.join(KERNELS)}, and fused only with model.cell=rnn "
                "(set model.kernel on the command line or in conf/model/)."
            )
        if not 0 <= dropout < 1:
            raise CharRNNError(f"model.dropout must lie in [0, 1), got {dropout!r}.")
        self.vocab_size = vocab_size
        self.input = input
        self.kernel = kernel
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if input == "embedding" else None
        input_size = embedding_dim if input == "embedding" else vocab_size
        # nn.RNN's own dropout acts only between stacked layers; a second Dropout sits before the
        # head so that dropout also means something for a single layer.
        self.rnn = CELLS[cell](
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
        fp32 cost 20% of the fast path's step time and did not help the final test perplexity
        (README, Performance).
        """
        if self.uses_fused_kernel():
            # Time-major inside: every step's slice (B, H) is contiguous.
            if self.embedding is not None:
                out, state = rnn_tanh(self.rnn, self.embedding(x.t()), state, onehot=False)
            else:
                out, state = rnn_tanh(self.rnn, x.t(), state, onehot=True)
            return self.head(self.dropout(out)).transpose(0, 1), state
        if self.embedding is not None:
            inputs = self.embedding(x)  # (B, T, E)
        else:
            inputs = F.one_hot(x, self.vocab_size).to(self.head.weight.dtype)  # (B, T, V)
        out, state = self.rnn(inputs, state)  # (B, T, H)
        return self.head(self.dropout(out)), state
