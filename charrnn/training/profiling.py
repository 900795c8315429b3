"""torch.profiler over a window of training steps, inside train.py's own path.

`python -m charrnn.bench --only profile` gives StepProfile to a short run of train.py's path. It
profiles whole steps, the data fetch and the copy to the device included, and reports what a
step costs the host and the device, and what makes the host wait for the device: synchronising
calls, and host-to-device copies from pageable memory (CUDA waits for all queued work before
such a copy; the batches' own copies should all be from pinned memory).
"""

from __future__ import annotations

import time

import lightning as L
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

SYNC_CALLS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize")


class StepProfile(L.Callback):
    """Profiles training steps [start, start + steps) of the run it is given to, counted across
    epochs; `stop`: training ends after them."""

    def __init__(self, start: int, steps: int, stop: bool = False) -> None:
        self.start, self.steps, self.stop = start, steps, stop
        self.profiler: profile | None = None
        self.wall_s: float | None = None
        self.device = "cpu"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.profiler is None and trainer.global_step == self.start:
            self.device = pl_module.device.type
            activities = [ProfilerActivity.CPU]
            if self.device == "cuda":
                activities.append(ProfilerActivity.CUDA)
                torch.cuda.synchronize()  # the window starts with an empty queue
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.wall_s is None and self.profiler is not None and \
                trainer.global_step == self.start + self.steps:
            if self.device == "cuda":
                torch.cuda.synchronize()
            self.wall_s = time.perf_counter() - self._t0
            self.profiler.__exit__(None, None, None)
            trainer.should_stop = trainer.should_stop or self.stop

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.profiler is not None and self.wall_s is None:  # the run ended inside the window
            self.profiler.__exit__(None, None, None)
            self.profiler = None

    def summary(self) -> dict[str, float]:
        """Per step: wall time, host-to-device copies from pageable memory, synchronising
        calls, and the fraction of the wall time the device was busy."""
        self._check_done()
        events = self.profiler.events()
        per_step = 1 / self.steps
        result = {
            "profile_ms_per_step": 1000 * self.wall_s * per_step,
            # On a GPU, less the one that ends the window (on_train_batch_end).
            "profile_syncs_per_step": per_step * (sum(e.name in SYNC_CALLS for e in events)
                                                  - (self.device == "cuda")),
        }
        if self.device == "cuda":
            result["profile_pageable_copies_per_step"] = per_step * sum(
                is_pageable_upload(e.name) for e in events)
            result["profile_device_busy_fraction"] = _busy_us(events) / (1e6 * self.wall_s)
        return result

    def table(self, rows: int = 20) -> str:
        """The costliest operations, by device time on a GPU, else by host time."""
        self._check_done()
        key = "self_device_time_total" if self.device == "cuda" else "self_cpu_time_total"
        return self.profiler.key_averages().table(sort_by=key, row_limit=rows)

    def _check_done(self) -> None:
        if self.wall_s is None:
            raise RuntimeError(f"the run ended before training step {self.start + self.steps}: "
                               "give it more steps (trainer.max_epochs, a longer corpus)")


def is_pageable_upload(name: str) -> bool:
    """Whether a profiler event is a host-to-device copy from pageable memory. Reads to the host
    land in pageable memory too ("Memcpy DtoH (Device -> Pageable)"): the grouped loss and norm
    reads are such copies, and are counted among the synchronising calls, not here."""
    return name.startswith("Memcpy HtoD") and "Pageable" in name


def _busy_us(events) -> float:
    """Microseconds in which at least one kernel or copy ran on the device: the union of their
    spans (user annotations, also shown on the device, left out)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == DeviceType.CUDA
                   and not getattr(e, "is_user_annotation", False)
                   and not e.name.startswith(("[", "ProfilerStep")))
    busy, covered = 0.0, float("-inf")  # covered: the end of the spans counted so far
    for begin, end in spans:
        if end > covered:
            busy += end - max(begin, covered)
            covered = end
    return busy
