"""Training and evaluation windows, and the order the sampler gives them."""

import pytest
import torch

from charrnn.data.windows import IGNORE_INDEX, EvalWindows, TrainWindows, WindowSampler


def test_train_windows_shift_by_one_and_do_not_overlap():
    data = torch.arange(53, dtype=torch.uint8)
    windows = TrainWindows(data, seq_length=10)
    assert len(windows) == 5  # (53 - 1) // 10
    for i in range(len(windows)):
        x, y = windows[10 * i]  # indexed by start position
        assert x.dtype == torch.long
        assert torch.equal(x, torch.arange(10 * i, 10 * i + 10))
        assert torch.equal(y, x + 1)


def test_eval_windows_cover_every_character_once():
    data = torch.arange(100, dtype=torch.uint8)
    windows = EvalWindows(data, start=40, end=65, seq_length=10)
    x = torch.cat([windows[i][0] for i in range(len(windows))])
    y = torch.cat([windows[i][1] for i in range(len(windows))])
    assert torch.equal(y[y != IGNORE_INDEX], torch.arange(40, 65))
    assert torch.equal(x[:25], torch.arange(39, 64))  # each input is the previous character


@pytest.mark.parametrize("streams", [1, 3])
def test_batched_eval_windows_match_window_by_window_slicing(streams):
    # The reference: each window cut on its own, the way the definition reads.
    data = torch.randint(0, 60, (300,), dtype=torch.uint8)
    start, end, L = 101, 243, 7
    windows = EvalWindows(data, start, end, L, streams=streams)
    stream_len = -(-(end - start) // streams)
    for i in range(len(windows)):
        s0 = start + (i % streams) * stream_len
        a = s0 + (i // streams) * L
        b = min(a + L, s0 + stream_len, end)
        x = torch.zeros(L, dtype=torch.long)
        y = torch.full((L,), IGNORE_INDEX, dtype=torch.long)
        if b > a:
            x[: b - a], y[: b - a] = data[a - 1 : b - 1], data[a:b]
        got_x, got_y = windows[i]
        assert torch.equal(got_x, x) and torch.equal(got_y, y), i
    batch_x, batch_y = windows.__getitems__(list(range(len(windows))))
    assert torch.equal(batch_x, torch.stack([windows[i][0] for i in range(len(windows))]))
    assert torch.equal(batch_y, torch.stack([windows[i][1] for i in range(len(windows))]))


def test_shuffle_depends_on_seed_and_epoch_only():
    a, b = WindowSampler(501, 10, seed=1), WindowSampler(501, 10, seed=1)
    first = list(a)
    assert first == list(b) and sorted(first) == list(range(0, 500, 10))
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


def test_random_offsets_move_the_window_boundaries():
    sampler = WindowSampler(501, 10, seed=0, random_offset=True)
    offsets = set()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        starts = sorted(sampler)
        assert len(starts) == len(sampler) == 49  # the same count every epoch
        assert all(b - a == 10 for a, b in zip(starts, starts[1:]))  # still non-overlapping
        assert starts[-1] + 10 + 1 <= 501  # the last target is inside the data
        offsets.add(starts[0])
    assert len(offsets) > 5 and offsets <= set(range(10))


def test_contiguous_batches_continue_row_by_row():
    sampler = WindowSampler(1001, 10, seed=0, streams=4)
    starts = list(sampler)
    assert len(starts) == 100  # 100 windows, a multiple of 4 streams
    batches = [starts[i : i + 4] for i in range(0, 100, 4)]
    for before, after in zip(batches, batches[1:]):
        assert [b - a for a, b in zip(before, after)] == [10, 10, 10, 10]
    assert batches[0] == [0, 250, 500, 750]


def test_stream_eval_windows_cover_every_character_once_row_by_row():
    data = torch.arange(200, dtype=torch.uint8)
    windows = EvalWindows(data, start=100, end=187, seq_length=5, streams=4)
    assert len(windows) % 4 == 0
    targets = torch.stack([windows[i][1] for i in range(len(windows))]).view(-1, 4, 5)
    per_stream = [targets[:, s].flatten() for s in range(4)]
    covered = torch.cat([t[t != IGNORE_INDEX] for t in per_stream])
    assert torch.equal(covered, torch.arange(100, 187))  # in order, each once
    inputs = torch.stack([windows[i][0] for i in range(len(windows))]).view(-1, 4, 5)
    assert torch.equal(inputs[1, 0, :1], targets[0, 0, -1:])  # row 0 continues
