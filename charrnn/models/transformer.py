"""A decoder-only causal Transformer over characters (pre-norm blocks, rotary positions).

Rotary position embeddings (RoPE) rather than learned ones: attention then depends only on
how far apart two characters are, so the cache of keys and values can slide. Generation keeps
the last `context_length - 1` keys and values of every block, and each new character costs one
step instead of a re-run of the window; scoring a long text reads it in chunks the same way.
With learned absolute positions a key's position is baked in, and a window that moves has to
be run again from its start.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from charrnn.errors import CharRNNError, check_int
from charrnn.models.regularization import check_rate, drop_embedding, locked_dropout


class KVCache(NamedTuple):
    """What a Transformer carries from one call to the next: the position of the next
    character and, per block, its last keys and values (B, heads, <= context_length - 1, d)."""

    position: int
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]


def rotary(positions: torch.Tensor, head_dim: int, dtype: torch.dtype
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, head_dim) of the rotary angles at `positions`.

    The angles are computed in float64: positions grow without bound along a long text, and in
    float32 `position x frequency` would lose the small differences that attention reads.
    """
    inv_freq = 10000.0 ** -(torch.arange(0, head_dim, 2, dtype=torch.float64,
                                         device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq  # (T, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of features (i, i + d/2) of x (B, heads, T, d) by the position's angle."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def extend(past: torch.Tensor, new: torch.Tensor, window: int) -> torch.Tensor:
    """past (B, heads, n, d) followed by new (B, heads, T, d) along the positions.

    Without autograd (generation, static scoring) a cache grows by a character per generated
    step, and concatenating would copy all of it every time. So the cache is a view into a
    buffer with room after its end: `new` is written there and a longer view returned; when the
    room runs out, a buffer of twice the window is made, so the whole cache is copied once every
    ~window steps. The buffer is found from the view's strides (buffers are contiguous and start
    their storage; views of autograd-free tensors do not keep `_base`). Caches returned earlier
    keep their contents, since only positions after their end are written, but two steps from
    the same cache would write the same places: a cache is used once, as generation does."""
    if torch.is_grad_enabled():  # training and dynamic evaluation: autograd's plain path
        return torch.cat([past, new], dim=2)
    B, H, n, d = past.shape
    T = new.shape[2]
    capacity = past.stride(1) // d
    start, rest = divmod(past.storage_offset(), d)
    if (past.dtype == new.dtype and past.stride() == (H * capacity * d, capacity * d, d, 1)
            and rest == 0 and start + n + T <= capacity
            and past.untyped_storage().nbytes() >= B * H * capacity * d * past.element_size()):
        past.as_strided((B, H, T, d), past.stride(), past.storage_offset() + n * d).copy_(new)
        return past.as_strided((B, H, n + T, d), past.stride(), past.storage_offset())
    buffer = new.new_empty(B, H, max(2 * window, n + T), d)
    buffer[:, :, :n] = past
    buffer[:, :, n : n + T] = new
    return buffer[:, :, : n + T]


def window_mask(queries: int, keys: int, window: int, device: torch.device) -> torch.Tensor:
    """(queries, keys) True where attention is allowed: the last `queries` of `keys` positions
    each see themselves and the `window - 1` positions before them."""
    q = torch.arange(keys - queries, keys, device=device)[:, None]
    k = torch.arange(keys, device=device)[None, :]
    return (k <= q) & (k > q - window)


class SelfAttention(nn.Module):
    def __init__(self, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None, window: int
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # (B, heads, T, d)
        if past is not None:
            k, v = extend(past[0], k, window), extend(past[1], v, window)
        S = k.shape[2]
        dropout = self.dropout if self.training else 0.0
        if S == T and T <= window:  # a window from its start: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif T == 1 and S <= window:  # one new character: it sees the whole cache
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            mask = window_mask(T, S, window, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.proj(y), (k, v)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = SelfAttention(width, num_heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, cos, sin, past, window):
        attended, kv = self.attention(self.norm1(x), cos, sin, past, window)
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.norm2(x))), kv


class CharTransformer(nn.Module):
    """Predicts the next character from (at most) the `context_length` characters up to it.

    The same interface as CharRNN: forward(x, state) -> logits (B, T, V) and a state, here a
    KVCache (None: start of a text). The head shares the embedding's weights (as nanoGPT).
    """

    recurrent = False

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        context_length: int = 100,
        input: str = "embedding",
        embedding_dim: int | None = None,
        dropout: float = 0.0,
        locked_dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__()
        from charrnn.models.rnn import check_input  # the same allowed values as the recurrent cells

        check_int("model.hidden_size", hidden_size, "conf/train/model/")
        check_int("model.num_layers", num_layers, "conf/train/model/")
        check_int("model.num_heads", num_heads, "conf/train/model/")
        check_int("model.context_length", context_length, "conf/train/model/")
        check_input(input, embedding_dim)
        if hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise CharRNNError(
                f"model.hidden_size={hidden_size} must split into model.num_heads={num_heads} "
                "heads of an even width (rotary positions rotate pairs of features), e.g. "
                "`model.hidden_size=256 model.num_heads=4`."
            )
        if embedding_dim not in (None, hidden_size):
            raise CharRNNError(
                f"model.cell=transformer embeds characters at its width, model.hidden_size="
                f"{hidden_size}: leave model.embedding_dim=null (got {embedding_dim})."
            )
        if weight_drop:
            raise CharRNNError(
                f"model.weight_drop={weight_drop} drops hidden-to-hidden weights, which only the "
                "recurrent cells (rnn, lstm, gru) have: set model.weight_drop=0 for "
                "model.cell=transformer (model.locked_dropout and model.embedding_dropout apply)."
            )
        for key, rate in (("model.dropout", dropout), ("model.locked_dropout", locked_dropout),
                          ("model.embedding_dropout", embedding_dropout)):
            check_rate(key, rate)
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.head_dim = hidden_size // num_heads
        self.locked_dropout = locked_dropout
        self.embedding_dropout = embedding_dropout
        # one-hot input times a learned matrix is an embedding: both mean one here.
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, dropout)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size)
        self.head.weight = self.embedding.weight
        self._init_weights(num_layers)

    def _init_weights(self, num_layers: int) -> None:
        """GPT-2's: N(0, 0.02), residual projections scaled down by the depth."""
        for name, p in self.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                std = 0.02 / math.sqrt(2 * num_layers) if name.endswith(("proj.weight",
                                                                        "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The input representation (B, T, hidden_size) of characters x (B, T)."""
        return self.embedding(x)

    def forward(self, x: torch.Tensor, state: KVCache | None = None
                ) -> tuple[torch.Tensor, KVCache]:
        """x: (B, T) character indices -> logits (B, T, V) and the cache for what follows."""
        weight = drop_embedding(self.embedding.weight, self.embedding_dropout, self.training)
        inputs = F.embedding(x, weight)
        return self.forward_embedded(
            locked_dropout(inputs, self.locked_dropout, self.training, time_dim=1), state
        )

    def forward_embedded(self, inputs: torch.Tensor, state: KVCache | None = None
                         ) -> tuple[torch.Tensor, KVCache]:
        """inputs (B, T, hidden_size), as `embed` makes them -> logits and the cache."""
        T = inputs.shape[1]
        start = 0 if state is None else state.position
        dtype = torch.get_autocast_dtype(inputs.device.type) if torch.is_autocast_enabled(
            inputs.device.type) else inputs.dtype
        cos, sin = rotary(torch.arange(start, start + T, device=inputs.device), self.head_dim,
                          dtype)
        x = self.dropout(inputs)
        keep = self.context_length - 1  # keys a next character can still see
        layers = []
        for i, block in enumerate(self.blocks):
            past = None if state is None or start == 0 else state.layers[i]
            x, (k, v) = block(x, cos, sin, past, self.context_length)
            layers.append((k[:, :, -keep:], v[:, :, -keep:]) if keep else (k[:, :, :0],
                                                                            v[:, :, :0]))
        x = locked_dropout(self.norm(x), self.locked_dropout, self.training, time_dim=1)
        return self.head(x), KVCache(start + T, tuple(layers))

    def stepper(self):
        """A function (ids (B,), state) -> (logits (B, V), state): one character for a batch,
        attending to the cached keys and values."""

        def step(ids: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
            logits, state = self(ids.unsqueeze(1), state)
            return logits[:, -1], state

        return step
