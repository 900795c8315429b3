"""Windows of the encoded corpus: training windows in a shuffled (or streamed) order, and
evaluation windows that score every character of a split exactly once. Each batch is one
gather, not one slice per window."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset, Sampler

IGNORE_INDEX = -100  # target value of padding in evaluation windows (F.cross_entropy's default)

Batch = tuple[torch.Tensor, torch.Tensor]


def whole_batch(batch: Batch) -> Batch:
    """collate_fn for datasets whose __getitems__ already returns the stacked batch."""
    return batch


class TrainWindows(Dataset):
    """Indexed by start position: `seq_length` inputs and the same characters shifted by one.

    The DataLoader fetches a whole batch with one gather (`__getitems__`) instead of one slice
    per window and a stack: 64 Python calls per step fewer.
    """

    def __init__(self, data: torch.Tensor, seq_length: int,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.data = data
        self.seq_length = seq_length
        self.gather = gather or data.__getitem__  # data[positions]; MappedGather when mapped

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.seq_length

    def __getitem__(self, start: int) -> Batch:
        x, y = self.__getitems__([start])
        return x[0], y[0]

    def __getitems__(self, starts: list[int]) -> Batch:
        positions = torch.tensor(starts)[:, None] + torch.arange(self.seq_length + 1)
        chunk = self.gather(positions)  # (B, seq_length + 1)
        # Contiguous, not views with the chunk's stride: a non-contiguous tensor goes to a GPU
        # through a pageable temporary, and that copy waits for all queued GPU work. (`long()`
        # of such a view is already one contiguous copy; `contiguous()` then costs nothing.)
        return chunk[:, :-1].long().contiguous(), chunk[:, 1:].long().contiguous()


class WindowSampler(Sampler[int]):
    """Start positions of non-overlapping training windows, a function of (seed, epoch) alone,
    so that a resumed run sees the same batches. Lightning calls `set_epoch` every epoch.

    - shuffled (default): every epoch a new order of the windows.
    - `streams=B`: no shuffling; the windows are cut into B contiguous streams and consecutive
      batches of B take the next window of every stream, so that row b of one batch continues
      row b of the batch before it (for carrying the hidden state across batches).
    - `random_offset`: every epoch the windows start at a new offset in [0, seq_length), so the
      window boundaries move; the number of windows stays the same every epoch.
    """

    def __init__(self, n_chars: int, seq_length: int, seed: int, random_offset: bool = False,
                 streams: int | None = None) -> None:
        self.seq_length = seq_length
        self.seed = seed
        self.random_offset = random_offset
        self.streams = streams
        usable = n_chars - 1 - (seq_length - 1 if random_offset else 0)
        self.n_windows = usable // seq_length
        if streams:
            self.n_windows -= self.n_windows % streams  # whole batches only
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_windows

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        offset = int(torch.randint(self.seq_length, (1,), generator=generator)) if (
            self.random_offset
        ) else 0
        if self.streams:
            order = torch.arange(self.n_windows).view(self.streams, -1).T.flatten()
        else:
            order = torch.randperm(self.n_windows, generator=generator)
        starts = offset + order * self.seq_length
        # In pieces: a list of every start of a large corpus would cost ~36 bytes per window.
        for piece in starts.split(1 << 16):
            yield from piece.tolist()


class EvalWindows(Dataset):
    """Windows whose targets cover every character of `data[start:end]` exactly once.

    The input of the split's first character is the character just before the split; windows
    are padded with IGNORE_INDEX targets so all have `seq_length` steps. With `streams=S` the
    split is cut into S contiguous streams and window i is window i // S of stream i % S, so a
    batch of S windows continues the batch before it row by row (as WindowSampler's streams).
    Windows are cut from `data` on demand: nothing is copied up front.
    """

    def __init__(self, data: torch.Tensor, start: int, end: int, seq_length: int,
                 streams: int = 1,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        assert start >= 1 and end > start
        self.data, self.start, self.end = data, start, end
        self.gather = gather or data.__getitem__  # data[positions]; MappedGather when mapped
        self.seq_length, self.streams = seq_length, streams
        self.stream_len = -(-(end - start) // streams)
        self.windows_per_stream = -(-self.stream_len // seq_length)

    def __len__(self) -> int:
        return self.windows_per_stream * self.streams

    def __getitem__(self, i: int) -> Batch:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> Batch:
        """Windows `indices`, stacked: (B, seq_length) inputs and targets, one gather each."""
        i = torch.tensor(indices)
        stream_start = self.start + (i % self.streams) * self.stream_len
        first = stream_start + (i // self.streams) * self.seq_length  # first target's position
        stop = (stream_start + self.stream_len).clamp(max=self.end)  # end of the stream
        # From the character before the first target: inputs are [:-1], targets [1:].
        positions = first[:, None] - 1 + torch.arange(self.seq_length + 1)  # (B, seq_length + 1)
        valid = positions[:, 1:] < stop[:, None]
        chunk = self.gather(positions.clamp(max=self.end - 1)).long()  # padding: any character
        x = chunk[:, :-1].masked_fill(~valid, 0)
        y = chunk[:, 1:].masked_fill(~valid, IGNORE_INDEX)
        return x, y
