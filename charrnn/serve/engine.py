"""Continuous batching: many generation streams, one model call per step.

A stream (one request) joins between steps, reads its prompt one character per step in the same
batched call that carries the other streams' generation, and leaves as soon as it is done or
cancelled (its client disconnected or pressed Stop): the next step no longer computes it. A
fork (the page's tree) reads its prefix in one model call (`Engine.read`) and joins from the
state after it, its candidate the first character. A worker thread steps the model; the web
side reads each stream's characters from its buffer.
Plain torch and threading: no web imports.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from charrnn.data.vocab import CharVocab
from charrnn.models.registry import CharModel, initial_state, join_rows, select_rows

TOP = 5  # candidates reported for every generated character
NOISE_ROWS = 64  # steps of sampling noise a stream draws at once


@dataclass(eq=False)
class Stream:
    """One request's generation: its settings, its progress and what it produced so far.

    `items` holds, for each generated character, a list [c, p, q, n, top, top_p] (short: the
    page gets thousands a second): the character; its probability in the distribution it was
    drawn from (after temperature and top-k); its probability under the model itself (T = 1);
    how many characters that distribution was choosing between (exp of its entropy); its most
    likely characters, as one string, and their probabilities. A stream that mixes with
    counting draws from the mixture (its q is the mixture's, at T = 1) and adds a seventh
    field: [model, n-gram] probabilities of the drawn character, then of each top one. With a
    watched hidden unit
    (`unit`: layer, index), every character read (the prompt's, then each generated one) is
    followed by a number: the unit after reading it.
    """

    inputs: deque[int]  # characters still to read: the prompt, then each generated one
    length: int  # characters to generate
    temperature: float
    top_k: int | None
    generator: torch.Generator
    unit: tuple[int, int, str] | None = None  # (layer, index, "h" or "c"): whose value to report
    items: deque[dict[str, Any]] = field(default_factory=deque)
    generated: int = 0
    done: bool = False
    cancelled: bool = False
    joined: float = field(default_factory=time.perf_counter)
    notify: Callable[[], None] | None = None  # called (from the worker) when items arrive

    state: Any = None  # a fork's state after its prefix, until it joins (None: from zeros)
    mix: Any = None  # a mixture with counting (charrnn.studies.mixture.MixedNext), or None
    history: list[int] = field(default_factory=list)  # what it read so far, for the mixture

    _noise: torch.Tensor | None = None
    _row: int = 0

    def cancel(self) -> None:
        """Stop generating at the next step (a disconnected client, Stop)."""
        self.cancelled = True

    def race(self, size: int) -> torch.Tensor:
        """The next step's exponential noise (size,) from the stream's generator, drawn
        NOISE_ROWS steps at a time where that gives the same numbers as a draw at every step
        (generate.py's), for less; step by step where it does not (torch 2.6)."""
        if self._noise is None or self._row == len(self._noise):
            rows = min(NOISE_ROWS, self.length - self.generated)
            if not rows_draw_like_steps(rows, size):
                return torch.empty(size).exponential_(generator=self.generator)
            self._noise = torch.empty(rows, size).exponential_(generator=self.generator)
            self._row = 0
        self._row += 1
        return self._noise[self._row - 1]


@functools.cache
def rows_draw_like_steps(rows: int, size: int) -> bool:
    """Whether one exponential draw of (rows, size) gives the numbers of `rows` draws of (size,)
    from the same generator. It does in torch 2.13; torch 2.6 fills larger tensors in another
    order. Checked once per shape, here, rather than assumed of every torch."""
    whole = torch.empty(rows, size).exponential_(generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    steps = torch.stack([torch.empty(size).exponential_(generator=generator) for _ in range(rows)])
    return torch.equal(whole, steps)


@dataclass(eq=False)
class _Group:
    """Streams stepped together in one call: all of them, for a recurrent model (states join
    row by row); those that joined at the same step, for a Transformer (its cache has one
    position for the whole batch)."""

    streams: list[Stream]
    state: Any


class Engine:
    """Steps every active stream of one model together, in a thread of its own."""

    def __init__(self, model: CharModel, vocab: CharVocab) -> None:
        self.model, self.vocab = model.eval(), vocab
        self.step = model.stepper()
        self.device = model.head.weight.device
        self._pending: list[Stream] = []
        self._groups: list[_Group] = []
        self._lock = threading.Condition()
        self._closed = False
        self.steps = 0  # batched steps so far (tests, the status page)
        self.reads = 0  # prefixes read whole (forks)
        self._thread = threading.Thread(target=self._run, name="charrnn-engine", daemon=True)
        self._thread.start()

    def start(self, prompt: str, length: int, temperature: float, top_k: int | None,
              seed: int, unit: tuple[int, int, str] | None = None,
              notify: Callable[[], None] | None = None, mix: Any = None) -> Stream:
        """A new stream, joining at the next step (its arguments already checked). An empty
        prompt starts from a newline, as generate.py does. `mix`: draw from the model mixed
        with counting (a MixedNext of this stream's own)."""
        start = prompt or ("\n" if "\n" in self.vocab.chars else self.vocab.chars[0])
        ids = self.vocab.encode(start).tolist()
        stream = Stream(deque(ids), length, float(temperature), top_k,
                        torch.Generator().manual_seed(seed), unit, notify=notify, mix=mix,
                        history=list(ids) if mix else [])
        with self._lock:
            self._pending.append(stream)
            self._lock.notify()
        return stream

    def read(self, text: str) -> tuple[torch.Tensor, Any]:
        """The next character's logits (V,) after `text`, and the state then: a fork's prefix,
        read in one model call however long it is (not one step per character)."""
        with torch.inference_mode():
            logits, state = self.model(self.vocab.encode(text).long().to(self.device)[None])
        self.reads += 1
        return logits[0, -1].float().cpu(), state

    def fork(self, logits: torch.Tensor, state: Any, char: str, length: int,
             temperature: float, top_k: int | None, seed: int,
             notify: Callable[[], None] | None = None, mix: Any = None,
             prefix: str = "") -> Stream:
        """A stream that continues from `state` (what `read` gave for the prefix) with `char`
        as its first generated character, in place of a draw, then `length - 1` drawn ones
        with the stream's own seed: the same fork and settings give the same text."""
        stream = Stream(deque(), length, float(temperature), top_k,
                        torch.Generator().manual_seed(seed), notify=notify, state=state,
                        mix=mix, history=self.vocab.encode(prefix).tolist() if mix else [])
        forced = self.vocab.encode(char).long()
        ((_, item),) = _sample(_mixed(logits[None], [stream]), [stream], self.vocab,
                               forced=forced)
        stream.items.append(item)
        if mix:
            stream.history.append(int(forced[0]))
        stream.generated = 1
        if length == 1:
            stream.done = True
        else:
            stream.inputs.append(int(forced[0]))
        with self._lock:
            self._pending.append(stream)
            self._lock.notify()
        return stream

    def active(self) -> int:
        """Streams waiting to join or running."""
        return len(self._pending) + sum(len(g.streams) for g in self._groups)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for stream in self._pending + [s for g in self._groups for s in g.streams]:
                stream.cancel()
            self._lock.notify()
        self._thread.join(timeout=5)

    # --- the worker ---

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._lock:
                while not self._closed and not self._pending and not self._groups:
                    self._lock.wait()
                if self._closed:
                    return
                joining, self._pending = self._pending, []
            self._join(joining)
            self._leave()  # a stream cancelled since the last step is not computed again
            if self._groups:
                with torch.inference_mode():
                    self._step()
                self._leave()

    def _join(self, streams: list[Stream]) -> None:
        streams = [s for s in streams if not (s.cancelled or s.done)]
        fresh = [s for s in streams if s.state is None]
        joining = [_Group(fresh, initial_state(self.model, len(fresh)))] if fresh else []
        for stream in streams:  # forks: each from the state after its own prefix
            if stream.state is not None:
                joining.append(_Group([stream], stream.state))
                stream.state = None
        with self._lock:
            for new in joining:
                if self.model.recurrent and self._groups:
                    group = self._groups[0]
                    group.streams += new.streams
                    group.state = join_rows([group.state, new.state])
                else:
                    self._groups.append(new)

    def _leave(self) -> None:
        """Drop the streams that are done or cancelled, and their rows of the state."""
        groups = []
        for group in self._groups:
            keep = [i for i, s in enumerate(group.streams) if not (s.done or s.cancelled)]
            if len(keep) < len(group.streams) and keep:
                group.state = select_rows(group.state, torch.tensor(keep, device=self.device))
            group.streams = [group.streams[i] for i in keep]
            if keep:
                groups.append(group)
        with self._lock:
            self._groups = groups

    def _step(self) -> None:
        """One character read by every stream; a sample for those past their prompt."""
        rows, logits, activations = [], [], []
        for group in self._groups:
            ids = torch.tensor([s.inputs.popleft() for s in group.streams], device=self.device)
            out, group.state = self.step(ids, group.state)
            rows += group.streams
            logits.append(out)
            activations += _activations(group.state, [s.unit for s in group.streams],
                                        self.model)
        self.steps += 1
        for stream, value in zip(rows, activations):
            if value is not None:  # the watched unit after reading this step's character
                stream.items.append(value)
        sampling = [i for i, s in enumerate(rows) if not s.inputs]
        drawing = [rows[i] for i in sampling]
        items = _sample(_mixed(torch.cat(logits)[sampling].float().cpu(), drawing), drawing,
                        self.vocab) if sampling else []
        for i, (next_id, item) in zip(sampling, items):
            stream = rows[i]
            stream.items.append(item)
            stream.generated += 1
            if stream.mix:
                stream.history.append(next_id)
            if stream.generated >= stream.length:
                stream.done = True
            else:
                stream.inputs.append(next_id)
        for stream in rows:
            if stream.notify is not None and stream.items:
                try:
                    stream.notify()
                except Exception:  # its reader is gone (a closed event loop): so is the stream
                    stream.cancel()


def _activations(state: Any, watched: list[tuple[int, int, str] | None],
                 model: CharModel) -> list[float | None]:
    """The watched unit's value in each row's recurrent state: (layer, index, "h" or, for an
    LSTM, "c")."""
    if not model.recurrent or not any(watched):
        return [None] * len(watched)
    parts = state if isinstance(state, tuple) else (state,)  # each (num_layers, B, H)
    return [None if unit is None else
            round(float(parts[unit[2] == "c"][unit[0], row, unit[1]]), 4)
            for row, unit in enumerate(watched)]


def _mixed(logits: torch.Tensor, streams: list[Stream]) -> torch.Tensor:
    """The rows of streams that mix with counting replaced by ln of their mixture (each
    stream's mixer keeps the two parts of its last step for `_sample` to report)."""
    if not any(s.mix for s in streams):
        return logits
    logits = logits.clone()
    for row, stream in enumerate(streams):
        if stream.mix:
            logits[row] = stream.mix(logits[row : row + 1], [stream.history])[0]
    return logits


def _sample(logits: torch.Tensor, streams: list[Stream], vocab: CharVocab,
            forced: torch.Tensor | None = None) -> list[dict]:
    """One character for each row of `logits` (R, V), drawn as generate.py draws it: softmax of
    logits / T over the top k, an exponential race with the stream's own generator (so a
    stream's text depends on its seed and settings, not on the streams beside it). `forced`
    (R,): these characters instead, no noise drawn (a fork), described the same way."""
    temperature = torch.tensor([s.temperature or 1.0 for s in streams])[:, None]  # (R, 1)
    limited = logits
    ks = [s.top_k or logits.shape[1] for s in streams]
    if min(ks) < logits.shape[1]:
        kth = torch.topk(logits, max(ks), dim=1).values.gather(1, torch.tensor(ks)[:, None] - 1)
        limited = logits.masked_fill(logits < kth, -math.inf)
    probs = F.softmax(limited / temperature, dim=1)  # the distribution drawn from
    greedy = torch.tensor([s.temperature == 0 for s in streams])
    if forced is None:
        race = torch.stack([s.race(logits.shape[1]) for s in streams])
        ids = torch.where(greedy, logits.argmax(dim=1), (probs / race).argmax(dim=1))
    else:
        ids = forced
    if greedy.any():  # T = 0: argmax, a distribution with all its mass on one character
        best = F.one_hot(logits.argmax(dim=1), logits.shape[1]).float()
        probs = torch.where(greedy[:, None], best, probs)
    choosing = torch.exp(-(probs * probs.clamp_min(1e-30).log()).sum(dim=1))  # exp(entropy)
    top_p, top_i = torch.topk(probs, min(TOP, logits.shape[1]), dim=1)
    # Every number of every row in one table, rounded here: one conversion to Python.
    numbers = torch.cat([probs.gather(1, ids[:, None]),
                         F.softmax(logits, dim=1).gather(1, ids[:, None]), top_p], dim=1)
    numbers = ((numbers.double() * 1e4).round() / 1e4).tolist()  # doubles: 0.037, not
    choosing = ((choosing.double() * 100).round() / 100).tolist()  # 0.03700000047683716
    chars = vocab.chars
    items = [(i, [chars[i], row[0], row[1], n, "".join(chars[j] for j in tis), row[2:]])
             for i, row, n, tis in zip(ids.tolist(), numbers, choosing, top_i.tolist())]
    for (i, item), stream, tis in zip(items, streams, top_i.tolist()):
        if stream.mix:  # each part's probability: the drawn character's, then the top's
            model, ngram = stream.mix.parts
            item.append([[round(float(model[0, j]), 4), round(float(ngram[0, j]), 4)]
                         for j in [i, *tis]])
    return items
