"""StepProfile: torch.profiler over a window of training steps of train.py's own path."""

import pytest
import torch

from charrnn.profiling import StepProfile
from charrnn.training import train


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
