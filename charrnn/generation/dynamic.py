"""Dynamic evaluation: scoring a text while the weights adapt to it (Krause et al., 2018).

The text is read in segments. Each segment is scored first, with the weights as they are, and
only then used for one Adam step on its loss; the hidden state is carried across segments. So the
probability of every character depends only on the characters before it (a proper sequential
prediction, like a compressor's), but the weights it is predicted with have learned from the text
read so far: new names and phrasings that the training text never had are picked up as they
recur. The result is not comparable with a static evaluation (fixed weights), and is reported
apart from it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from charrnn.errors import check_int, check_number
from charrnn.models.registry import CharModel, detach_state


def check_dynamic_args(lr: float, segment: int) -> None:
    check_number("dynamic.lr", lr, "conf/generate/generate.yaml", at_least=0,
                 note=" (0 = static evaluation)")
    check_int("dynamic.segment", segment, "conf/generate/generate.yaml")


def dynamic_loss_sum(
    model: CharModel,
    ids: torch.Tensor,
    lr: float,
    segment: int = 50,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> float:
    """Sum of the cross-entropies (nats) of ids[1:] given the characters before each.

    ids: (N,) character indices. The model is not changed: a copy adapts, in eval mode (no
    dropout), with Adam at learning rate `lr` after every `segment` characters. `on_progress`
    gets (characters scored, characters in all, loss sum so far) after every segment.
    """
    check_dynamic_args(lr, segment)
    adapted = copy.deepcopy(model).eval()
    for p in adapted.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(adapted.parameters(), lr=lr)
    ids = ids.unsqueeze(0)  # (1, N)
    n = ids.shape[1] - 1
    total, state = 0.0, None
    for i in range(0, n, segment):
        y = ids[:, i + 1 : i + 1 + segment]
        logits, state = adapted(ids[:, i : i + y.shape[1]], state)
        loss = F.cross_entropy(logits[0].float(), y[0])
        total += loss.item() * y.shape[1]  # scored before the step that learns from it
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Truncated backpropagation: the next segment starts from this state, not through it.
        state = detach_state(state)
        if on_progress is not None:
            on_progress(i + y.shape[1], n, total)
    return total
