"""StepProfile: torch.profiler over a window of training steps of train.py's own path."""

import pytest
import torch

from charrnn.training.profiling import StepProfile
from charrnn.training.run import train


def test_profiles_the_window_and_stops_after_it(tiny_cfg):
    profile = StepProfile(start=3, steps=4, stop=True)
    metrics = train(tiny_cfg("trainer.max_epochs=3", "test=false"), first_callbacks=(profile,))
    summary = profile.summary()
    assert summary["profile_ms_per_step"] > 0
    assert summary["profile_syncs_per_step"] == 0
    assert "profile_pageable_copies_per_step" not in summary  # a GPU's figures only
    assert "Self CPU" in profile.table()
    assert metrics["epochs_run"] == 1  # of 3: it stopped after the window, in the first


def test_a_run_shorter_than_the_window_says_so(tiny_cfg):
    profile = StepProfile(start=3, steps=10_000)
    train(tiny_cfg("trainer.max_epochs=1", "test=false"), first_callbacks=(profile,))
    with pytest.raises(RuntimeError, match="ended before training step 10003"):
        profile.summary()
    assert torch.autograd.profiler._is_profiler_enabled is False  # not left running


def test_device_busy_time_is_the_union_of_kernel_spans():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from charrnn.training.profiling import _busy_us

    def event(begin, end, name="kernel", device=DeviceType.CUDA):
        return SimpleNamespace(time_range=SimpleNamespace(start=begin, end=end), name=name,
                               device_type=device, is_user_annotation=False)

    events = [event(0, 10), event(5, 12), event(20, 25), event(21, 22),  # overlaps count once
              event(0, 100, name="[pl][module]model"), event(30, 90, device=DeviceType.CPU)]
    assert _busy_us(events) == 12 + 5


def test_only_uploads_from_pageable_memory_count_as_pageable_copies():
    from charrnn.training.profiling import is_pageable_upload

    assert is_pageable_upload("Memcpy HtoD (Pageable -> Device)")
    assert not is_pageable_upload("Memcpy HtoD (Pinned -> Device)")
    assert not is_pageable_upload("Memcpy DtoH (Device -> Pageable)")  # a grouped read
    assert not is_pageable_upload("aten::copy_")
