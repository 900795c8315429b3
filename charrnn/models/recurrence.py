"""nn.RNN's tanh recurrence with a hand-written backward pass: same parameters, same function.

On a CPU, nn.RNN records every time step in the autograd graph, and its backward pass computes
the gradient of W_hh as T small (B x H x H) products. Here a step is two in-place ops forward
(`h_t = tanh(a_t + h_{t-1} W_hh^T)`) and two backward, and the gradient of W_hh is one large
product over all steps at the end. With one-hot input, `one_hot(x) @ W_ih^T` is a row lookup
in W_ih^T, so no one-hot tensor is built on the way forward. Tests check values and gradients
against nn.RNN; docs/performance.md has the speed-up. Tensors inside are time-major (T, B, H).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def layer_parameters(rnn: nn.RNN, layer: int, weights: dict[str, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W_ih, W_hh and the two biases summed (nn.RNN adds both at every step) of one layer;
    `weights` replaces parameters by name (e.g. a DropConnect copy of weight_hh_l0)."""
    def get(name: str) -> torch.Tensor:
        name = f"{name}_l{layer}"
        return weights[name] if weights and name in weights else getattr(rnn, name)

    return get("weight_ih"), get("weight_hh"), get("bias_ih") + get("bias_hh")


class _TanhRecurrence(torch.autograd.Function):
    """out_t = tanh(a_t + out_{t-1} W_hh^T) with out_{-1} = h0.

    The input projections a (T, B, H) are given, or, for one-hot input, looked up step by step as
    rows `table[ids[t]]` of table = W_ih^T + biases (V, H): written straight into the output
    buffer, where the step's product then finds them in cache.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor | None, ids: torch.Tensor | None, table: torch.Tensor | None,
                h0: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
        w_hh_t = w_hh.t()
        if a is None:
            out = table.new_empty(*ids.shape, table.shape[1])
        else:
            out = a.clone(memory_format=torch.contiguous_format)
        h = h0
        for t in range(out.shape[0]):
            if a is None:
                torch.index_select(table, 0, ids[t], out=out[t])
            h = out[t].addmm_(h, w_hh_t).tanh_()
        ctx.save_for_backward(ids, h0, w_hh, out)
        ctx.vocab_size = None if table is None else table.shape[0]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        ids, h0, w_hh, out = ctx.saved_tensors
        # grad[t] becomes dL/d(pre-activation of step t): the output's own gradient, plus what
        # flows back from step t + 1, times tanh' = 1 - out_t^2.
        grad = grad_out.contiguous().clone()
        tanh_backward = torch.ops.aten.tanh_backward.grad_input
        for t in range(out.shape[0] - 1, -1, -1):
            tanh_backward(grad[t], out[t], grad_input=grad[t])
            if t:
                grad[t - 1].addmm_(grad[t], w_hh)
        grad_a = grad if ctx.needs_input_grad[0] else None
        grad_table = None
        if ctx.needs_input_grad[2]:
            # The one-hot product, not a scatter-add: under bf16 this sums each character's
            # gradients with fp32 accumulation (scatter-add sums in bf16: 0.047 against 0.0023
            # relative error over 6,400 rows).
            onehot = F.one_hot(ids.flatten(), ctx.vocab_size).to(grad.dtype)  # (T*B, V)
            grad_table = onehot.t() @ grad.flatten(0, 1)
        grad_h0 = grad[0] @ w_hh if ctx.needs_input_grad[3] else None
        grad_w_hh = None
        if ctx.needs_input_grad[4]:
            previous = torch.cat([h0.unsqueeze(0), out[:-1]]).flatten(0, 1)  # h_{t-1}: (T*B, H)
            grad_w_hh = grad.flatten(0, 1).t() @ previous
        return grad_a, None, grad_table, grad_h0, grad_w_hh


def rnn_tanh(rnn: nn.RNN, x: torch.Tensor, state: torch.Tensor | None, onehot: bool,
             weights: dict[str, torch.Tensor] | None = None,
             char_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What `rnn` computes, time-major and faster on a CPU.

    x: (T, B) character indices when `onehot`, else (T, B, input_size) inputs; state:
    (num_layers, B, H) or None for zeros. Returns the top layer's outputs (T, B, H) and the final
    state (num_layers, B, H). Under autocast, runs in the autocast dtype as nn.RNN does.
    `weights` replaces parameters by name; `char_scale` (V,) multiplies each character's one-hot
    input (character dropout).
    """
    device = rnn.weight_hh_l0.device
    dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
             else rnn.weight_hh_l0.dtype)
    T, B = x.shape[:2]
    finals = []
    with torch.autocast(device.type, enabled=False):
        for layer in range(rnn.num_layers):
            w_ih, w_hh, bias = layer_parameters(rnn, layer, weights)
            w_hh = w_hh.to(dtype)
            h0 = (torch.zeros(B, rnn.hidden_size, device=device, dtype=dtype) if state is None
                  else state[layer].to(dtype))
            if layer == 0 and onehot:
                rows = w_ih.t() if char_scale is None else w_ih.t() * char_scale[:, None]
                table = (rows + bias).to(dtype)  # one_hot(x) @ W_ih^T = rows of W_ih^T
                x = _TanhRecurrence.apply(None, x, table, h0, w_hh)
            else:
                if layer > 0 and rnn.dropout and rnn.training:
                    x = F.dropout(x, rnn.dropout, training=True)
                a = F.linear(x.to(dtype), w_ih.to(dtype), bias.to(dtype))
                x = _TanhRecurrence.apply(a, None, None, h0, w_hh)
            finals.append(x[-1])
    return x, torch.stack(finals)
